"""End to end: serve.py / the embedded Triton + client/classify.py over HTTP and gRPC, against in-process TorchScript."""

import glob
import http.client
import json
import re
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli, start_serve_py
from mnv3kit.build import BuildOptions, build
from mnv3kit.measure.edge_images import BAD, GOOD, make_edge_cases
from mnv3kit.model import build_model
from mnv3kit.parity import allowed_difference
from mnv3kit.preprocess import preprocess_file
from mnv3kit.render import Batching, ConfigOptions, Instances
from mnv3kit.server import LocalTriton, Ports, free_ports
from mnv3kit.spec import ADMIN_KEY_ENV, ENSEMBLE, ONNX, PT

WRONG = "mobilenetv3_wrongshape"  # a copy of the ONNX model whose config promises 299x299 inputs
SHARP = "mobilenetv3_sharp"  # an ONNX model whose logits lie thousands apart: most probabilities are 0.0


@pytest.fixture(scope="module")
def edge(photos, tmp_path_factory):
    return make_edge_cases(photos[1], tmp_path_factory.mktemp("client-edge"))


@pytest.fixture(scope="module")
def server(built_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("serve") / "repo"
    shutil.copytree(built_repo("small", "local"), repo)
    shutil.copytree(repo / ONNX.name, repo / WRONG)
    cfg = repo / WRONG / "config.pbtxt"
    text = cfg.read_text().replace(ONNX.name, WRONG)
    text = text[:text.index("model_warmup")] + text[text.index("parameters"):]  # a 299 warmup would fail the load
    cfg.write_text(text.replace("dims: [ 3, 224, 224 ]", "dims: [ 3, 299, 299 ]"))
    sharp = tmp_path_factory.mktemp("sharp")
    state = build_model("small", 5, seed=3).state_dict()
    state["classifier.3.weight"] *= 1000
    torch.save(state, sharp / "sharp.pth")
    build(BuildOptions(arch="small", weights=sharp / "sharp.pth", output=sharp / "repo", models=("onnx",),
                       config=ConfigOptions(target="local", instances=Instances("KIND_CPU"))))
    shutil.copytree(sharp / "repo" / ONNX.name, repo / SHARP)
    cfg = repo / SHARP / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(ONNX.name, SHARP))
    with LocalTriton(repo, Ports.free()) as srv:
        srv.repo_path = repo
        yield srv


def torchscript_logits(repo, paths):
    module = torch.jit.load(str(repo / PT.name / "1" / PT.artifact))
    with torch.no_grad():
        return module(torch.from_numpy(np.stack([preprocess_file(p) for p in paths]))).numpy()


def classify_json(*args):
    proc = run_cli("client/classify.py", "--json", *args)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc, records


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("mode", [("-b", "1"), ("-b", "4"), ("-b", "8", "--async")], ids=["single", "batched", "async"])
def test_served_logits_equal_torchscript(server, photos, edge, protocol, mode):
    url = server.http_url if protocol == "http" else server.grpc_url
    good = list(photos) + [edge[name] for name in GOOD]
    bad = [edge[name] for name in BAD]
    inputs = [good[0], bad[0], *good[1:5], *bad[1:], *good[5:]]  # bad ones in between good ones
    proc, records = classify_json(*inputs, "-u", url, "-i", protocol, "-k", "3", *mode)
    assert proc.returncode == 1, proc.stderr  # some images unreadable, the rest classified
    assert "Traceback" not in proc.stderr
    assert [r["path"] for r in records] == [str(p) for p in inputs]
    classified = {r["path"]: r for r in records if "error" not in r}
    assert sorted(classified) == sorted(map(str, good))
    for name, path in zip(bad, bad):
        record = next(r for r in records if r["path"] == str(path))
        assert BAD[path.stem if path.stem in BAD else "missing"] in record["error"]
        assert f"skipped {path}" in proc.stderr
    assert f"{len(bad)} of {len(inputs)} images could not be read" in proc.stderr
    expected = torchscript_logits(server.repo_path, good)
    served = np.array([classified[str(p)]["logits"] for p in good], np.float32)
    # logits travel as text in the classification extension ("%f"): 6 decimals
    np.testing.assert_allclose(served, expected, rtol=0, atol=allowed_difference(expected) + 1e-6)
    for path, row in zip(good, expected):
        top = classified[str(path)]["top"]
        assert len(top) == 3 and top[0]["index"] == int(row.argmax())
        assert top[0]["label"] == f"class_{top[0]['index']}"
        assert abs(sum(np.exp(row - row.max()) / np.exp(row - row.max()).sum()) - 1) < 1e-6
        assert top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"] > 0


def test_text_output_and_onnx_model(server, photos):
    proc = run_cli("client/classify.py", *photos, "-u", server.http_url, "-m", ONNX.name, "-k", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(photos)
    for line, path in zip(lines, photos):
        assert re.fullmatch(rf"{re.escape(str(path))}: class_\d \d\.\d{{3}}, class_\d \d\.\d{{3}}", line), line


def test_topk_above_the_class_count_is_clamped_with_a_note(server, photos):
    proc = run_cli("client/classify.py", *photos, "-u", server.http_url, "-m", ONNX.name, "-k", "10")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"classify.py: note: -k 10 is above the 5 classes of {ONNX.name}: showing all 5"]
    assert all(line.count(", ") == 4 for line in proc.stdout.splitlines())


def test_folder_input(server, photos):
    proc, records = classify_json(photos[0].parent, "-u", server.grpc_url, "-i", "grpc")
    assert proc.returncode == 0 and len(records) == len(photos)


def test_server_unreachable(photos):
    proc = run_cli("client/classify.py", photos[0], "-u", f"localhost:{free_ports(1)[0]}")
    assert proc.returncode == 3
    assert_one_line_error(proc, "unreachable")
    proc = run_cli("client/classify.py", photos[0], "-u", f"localhost:{free_ports(1)[0]}", "-i", "grpc", "--timeout", "5")
    assert proc.returncode == 3
    assert_one_line_error(proc, "unreachable")


def test_url_may_carry_the_scheme(server, photos):
    for args in (["-u", f"http://{server.http_url}"], ["-u", f"http://{server.http_url}/", "-i", "http"],
                 ["-u", f"grpc://{server.grpc_url}", "-i", "grpc"]):
        proc = run_cli("client/classify.py", photos[0], *args)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)
    proc = run_cli("client/classify.py", photos[0], "-u", f"grpc://{server.grpc_url}")  # -i http by default
    assert proc.returncode == 2
    assert_one_line_error(proc, "is a grpc address but -i is http", "pass -i grpc")
    proc = run_cli("client/classify.py", photos[0], "-u", f"https://{server.http_url}")
    assert proc.returncode == 2
    assert_one_line_error(proc, "https:// is not supported", "no TLS")
    proc = run_cli("client/classify.py", photos[0], "-u", "localhost:http")
    assert proc.returncode == 2 and "_closed" not in proc.stderr  # tritonclient's half-built client stays unbuilt
    assert_one_line_error(proc, "expected HOST:PORT")


def test_the_other_protocols_port_is_named(server, photos):
    grpc_port, http_port = server.grpc_url.rpartition(":")[2], server.http_url.rpartition(":")[2]
    proc = run_cli("client/classify.py", photos[0], "-u", server.grpc_url, "-i", "http")
    assert proc.returncode == 3
    assert_one_line_error(proc, f"is {grpc_port} Triton's grpc port? use -i grpc")
    proc = run_cli("client/classify.py", photos[0], "-u", server.http_url, "-i", "grpc", "--timeout", "10")
    assert proc.returncode == 3
    assert_one_line_error(proc, f"is {http_port} Triton's http port? use -i http")


def test_top_classes_are_ranked_by_logit_when_probabilities_underflow(server, photos, edge):
    images = [*photos, *(edge[name] for name in GOOD)]
    proc, records = classify_json(*images, "-u", server.http_url, "-m", SHARP, "-k", "5")
    assert proc.returncode == 0, proc.stderr
    assert any(sum(t["prob"] == 0.0 for t in r["top"]) >= 2 for r in records)  # ties by probability
    for record in records:
        logits = [t["logit"] for t in record["top"]]
        assert logits == sorted(record["logits"], reverse=True), record


def test_async_keeps_a_folder_within_the_models_queue(server, photos, tmp_path):
    """400 single-image requests with --async: more than the model's queue (32) admits at once."""
    for i in range(400):
        shutil.copyfile(photos[i % len(photos)], tmp_path / f"{i:03d}.jpg")
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        proc = run_cli("client/classify.py", tmp_path, "-u", url, "-i", protocol, "-b", "1", "--async")
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 400


def test_an_overloaded_image_ensemble_is_exit_6_not_unreadable_files(photos, tmp_path):
    repo = tmp_path / "repo"
    # a queue of 4 (the warmup's batch must fit in it): 16 requests in flight overflow it
    build(BuildOptions(arch="small", output=repo, models=("pt",), ensemble="pt",
                       config=ConfigOptions(target="local", instances=Instances("KIND_CPU"), max_batch_size=4,
                                            batching=Batching(preferred=(4,), max_queue_size=4))))
    for i in range(64):
        shutil.copyfile(photos[i % len(photos)], tmp_path / f"{i:02d}.jpg")
    with LocalTriton(repo, Ports.free()) as srv:
        proc = run_cli("client/classify.py", *sorted(tmp_path.glob("*.jpg")), "-u", srv.grpc_url, "-i", "grpc",
                       "-m", ENSEMBLE, "--async")
    assert proc.returncode == 6, proc.stderr
    assert "skipped" not in proc.stderr and "could not be read" not in proc.stderr
    assert_one_line_error(proc, "overloaded", "--max-in-flight")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_model_lists_ready_ones(server, photos, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    proc = run_cli("client/classify.py", photos[0], "-u", url, "-i", protocol, "-m", "resnet50",
                   env={ADMIN_KEY_ENV: server.admin_key})
    assert proc.returncode == 4
    assert_one_line_error(proc, "'resnet50' is not ready", PT.name, ONNX.name)
    # the repository index is an admin API: without the key the client says so instead of listing
    proc = run_cli("client/classify.py", photos[0], "-u", url, "-i", protocol, "-m", "resnet50",
                   env={ADMIN_KEY_ENV: ""})
    assert proc.returncode == 4
    assert_one_line_error(proc, "'resnet50' is not ready", ADMIN_KEY_ENV)


def test_contract_mismatch(server, photos):
    proc = run_cli("client/classify.py", photos[0], "-u", server.http_url, "-m", WRONG)
    assert proc.returncode == 5
    assert_one_line_error(proc, "[3, 299, 299]", "[3, 224, 224]")


def test_batch_size_above_max(server, photos):
    proc = run_cli("client/classify.py", photos[0], "-u", server.http_url, "-b", "9")
    assert proc.returncode == 2
    assert_one_line_error(proc, "max_batch_size (8)")


def test_large_arch_grpc_batched(built_repo, photos):
    repo = built_repo("large", "local")
    with LocalTriton(repo, Ports.free()) as srv:
        proc, records = classify_json(*photos, "-u", srv.grpc_url, "-i", "grpc", "-b", "2")
    assert proc.returncode == 0, proc.stderr
    expected = torchscript_logits(repo, photos)
    np.testing.assert_allclose(np.array([r["logits"] for r in records]), expected, rtol=0,
                               atol=allowed_difference(expected) + 1e-6)


def _tritonservers_for(repo):
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "tritonserver" in line and f"--model-repository={repo}" in line]


def _leftovers(pid):
    """What a server started by process `pid` could leave: its work directory, python-backend shm regions."""
    return sorted(glob.glob(f"{tempfile.gettempdir()}/mnv3kit-triton-{pid}-*") + glob.glob(f"/dev/shm/mnv3kit_{pid}_*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_serve_py_starts_serves_and_stops_cleanly(built_repo, photos, sig):
    repo = built_repo("small", "local")
    ports = Ports.free()
    proc = start_serve_py(repo, ports)
    try:
        assert run_cli("client/classify.py", photos[0], "-u", f"127.0.0.1:{ports.http}").returncode == 0
        assert _tritonservers_for(repo.resolve()) and _leftovers(proc.pid)
        # an idle keep-alive connection made Triton wait its whole exit timeout (30 s) before it gave up
        idle = http.client.HTTPConnection("127.0.0.1", ports.http)
        idle.request("GET", "/v2/health/live")
        assert idle.getresponse().read() == b""
    finally:
        started = time.monotonic()
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # a hung serve.py must not outlive its test (its Triton dies with it: PDEATHSIG)
            code = "still running 60 s after the signal"
        assert code == 0, proc.stderr.read()  # 0: Triton exited by itself, nothing left behind
    assert time.monotonic() - started < 15
    assert not _tritonservers_for(repo.resolve())  # no orphans
    assert not _leftovers(proc.pid)


def test_tritonserver_dies_with_a_killed_serve_py(built_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(built_repo("small", "local"), repo)
    ports = Ports.free()
    proc = start_serve_py(repo, ports)
    proc.kill()  # SIGKILL: serve.py runs no cleanup at all
    proc.wait()
    deadline = time.monotonic() + 20
    while _tritonservers_for(repo.resolve()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _tritonservers_for(repo.resolve())  # PR_SET_PDEATHSIG stopped it
    assert not glob.glob(f"/dev/shm/mnv3kit_{proc.pid}_*")  # Triton removed its regions itself on SIGTERM
    stale = _leftovers(proc.pid)
    assert stale  # serve.py's work directory could not be removed by a killed serve.py ...
    with LocalTriton(repo, Ports.free()):
        assert not _leftovers(proc.pid)  # ... so the next start removes it


def test_serve_py_refuses_ngc_repo_and_reports_load_errors(built_repo, tmp_path):
    proc = run_cli("serve.py", "--repo", built_repo("small", "ngc"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "--target local")
    broken = tmp_path / "broken"
    shutil.copytree(built_repo("small", "local"), broken)
    (broken / ONNX.name / "1" / ONNX.artifact).write_bytes(b"garbage")
    ports = Ports.free()
    proc = run_cli("serve.py", "--repo", broken, "--http-port", ports.http, "--grpc-port", ports.grpc,
                   "--metrics-port", ports.metrics)
    assert proc.returncode == 2 and "Traceback (most recent call last)" not in proc.stderr.split("error:")[0]
    assert "tritonserver exited" in proc.stderr and ONNX.name in proc.stderr


def test_uint8_model_normalizes_on_the_server(tmp_path, photos):
    """mobilenetv3_u8 takes raw pixels (4x fewer bytes) and gives the FP32 model's logits; channels_last too."""
    repo = tmp_path / "repo"
    proc = run_cli("build_repo.py", "--target", "local", "--arch", "small", "--models", "pt,u8", "--channels-last",
                   "-o", repo)
    assert proc.returncode == 0, proc.stderr
    config = (repo / "mobilenetv3_u8" / "config.pbtxt").read_text()
    assert "TYPE_UINT8" in config and '"0.485,0.456,0.406"' in config
    with LocalTriton(repo, Ports.free()) as srv:
        proc, records = classify_json(*photos, "-u", srv.grpc_url, "-i", "grpc", "-m", "mobilenetv3_u8", "-b", "2")
        checked = run_cli("perf/served_parity.py", "--repo", repo, "-u", srv.grpc_url)
        # the server keeps the loaded model: a reference edited now is one the served answers no longer match
        reference = repo / "mobilenetv3_u8" / "1" / "parity.npz"
        data = dict(np.load(reference))
        data["logits"][0, 0] += 1.0
        np.savez(reference, **data)
        tampered = run_cli("perf/served_parity.py", "--repo", repo, "-u", srv.grpc_url)
    assert proc.returncode == 0, proc.stderr
    expected = torchscript_logits(repo, photos)
    np.testing.assert_allclose(np.array([r["logits"] for r in records]), expected, rtol=0,
                               atol=allowed_difference(expected) + 1e-6)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert [line.split(":")[0] for line in checked.stdout.splitlines()] == ["mobilenetv3_pt v1", "mobilenetv3_u8 v1"]
    assert all(line.endswith(": ok") for line in checked.stdout.splitlines()), checked.stdout
    assert tampered.returncode == 1 and tampered.stdout.splitlines()[0].endswith(": ok"), tampered.stdout
    assert tampered.stdout.splitlines()[1].endswith("FAILED"), tampered.stdout


def test_served_parity_needs_a_reference(tmp_path):
    assert_one_line_error(run_cli("perf/served_parity.py", "--repo", tmp_path), "no model with a parity.npz")
