"""The image ensemble: build, --check findings, and the real embedded Triton serving encoded photographs."""

import base64
import json
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import ROOT, assert_one_line_error, queue_bound, run_cli
from mnv3kit.measure.edge_images import BAD, GOOD, make_edge_cases
from mnv3kit.backend import KIT_DIR, VENDORED
from mnv3kit.backend.preprocess_model import cpu_preprocess, gpu_decodable
from mnv3kit.build import BuildOptions, build
from mnv3kit.ensemble import VENDOR_DIR, WARMUP_DIR, WARMUP_FILE, render_dali_pipeline
from mnv3kit.errors import KitError
from mnv3kit.measure.image_bench import make_jpegs
from mnv3kit.parity import allowed_difference
from mnv3kit.preprocess import preprocess_file
from mnv3kit.render import Batching, ConfigOptions, Instances
from mnv3kit.server import LocalTriton, Ports
from mnv3kit.spec import ADMIN_KEY_ENV, ENSEMBLE, ENSEMBLE_OUTPUT, IMAGE_INPUT, PREPROCESS, PT, STD, TRT, U8
from mnv3kit.validate import check_repository

# DALI decodes RGBA without compositing on white and cannot read GIF: every other edge case must match
DALI_SAME = ("grayscale", "cmyk", "gray16", "exif_rotated", "tiny", "huge")
DALI_LOGIT_TOLERANCE = 0.05  # x max(1, max |logit|): measured 0.043, see docs/classify.md
BATCH_DELAY_US = 3_000_000  # long enough that concurrently sent requests are sure to meet in one batch


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def edge(photos, tmp_path_factory):
    return make_edge_cases(photos[1], tmp_path_factory.mktemp("ensemble-edge"))


@pytest.fixture(scope="module")
def repo(built_repo):
    return built_repo("small", "local", ensemble="pt")


@pytest.fixture(scope="module")
def server(repo):
    with LocalTriton(repo, Ports.free()) as srv:
        yield srv


def damaged(repo, tmp_path, model, old, new):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    cfg = copy / model / "config.pbtxt"
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new))
    return copy


# ---------------------------------------------------------------- build and --check

def test_build_writes_ensemble_and_self_contained_preprocessing(repo):
    ensemble, pre = parse(repo / ENSEMBLE / "config.pbtxt"), parse(repo / PREPROCESS / "config.pbtxt")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [PREPROCESS, PT.name]
    assert (ensemble.input[0].name, list(ensemble.input[0].dims)) == (IMAGE_INPUT, [-1])
    assert ensemble.output[0].name == ENSEMBLE_OUTPUT and ensemble.output[0].label_filename == "labels.txt"
    assert (repo / ENSEMBLE / "labels.txt").read_text() == (repo / PT.name / "labels.txt").read_text()
    assert pre.backend == "python" and pre.input[0].allow_ragged_batch
    assert pre.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert pre.output[0].data_type == model_config_pb2.TYPE_FP32
    # overload refused as for the classifiers; warmup decodes a real JPEG at batch 1 and max batch
    assert queue_bound(pre) == (32, 5_000_000)
    warmup_jpeg = (repo / PREPROCESS / WARMUP_DIR / WARMUP_FILE).read_bytes()
    assert warmup_jpeg[:3] == b"\xff\xd8\xff"
    assert [w.batch_size for w in pre.model_warmup] == [1, 8]
    for w in pre.model_warmup:
        tensor = w.inputs[IMAGE_INPUT]
        assert (tensor.input_data_file, list(tensor.dims)) == (WARMUP_FILE, [len(warmup_jpeg)])
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["ensemble"] == {"name": ENSEMBLE, "classifier": PT.name, "kind": "ensemble"}
    assert {PREPROCESS, ENSEMBLE} <= set(manifest["models"])
    # the stub imports the kit's preprocessing from the copy beside model.py: it must be the kit's, byte for byte
    vendored = repo / PREPROCESS / "1" / VENDOR_DIR
    assert sorted(p.name for p in vendored.iterdir()) == sorted(VENDORED)
    for name in VENDORED:
        assert (vendored / name).read_bytes() == (KIT_DIR / name).read_bytes(), name
    served_model = (repo / PREPROCESS / "1" / "model.py").read_bytes()
    assert served_model == (KIT_DIR / "backend" / "preprocess_model.py").read_bytes()
    assert check_repository(repo).ok


def test_build_flag_errors(tmp_path):
    proc = run_cli("build_repo.py", "--target", "local", "--ensemble", "trt", "-o", tmp_path / "r")
    assert_one_line_error(proc, "--ensemble trt", "pt, onnx, u8")
    proc = run_cli("build_repo.py", "--target", "local", "--models", "pt", "--ensemble", "onnx", "-o", tmp_path / "r")
    assert_one_line_error(proc, "add onnx to --models")
    proc = run_cli("build_repo.py", "--target", "ngc", "--ensemble", "trt", "--image-model", "fused", "-o",
                   tmp_path / "r")
    assert_one_line_error(proc, "--image-model fused runs in the python backend", "--target local")
    assert not (tmp_path / "r").exists()


def test_build_writes_the_fused_image_model(tmp_path):
    """--image-model fused: mobilenetv3_image is one python model with both models' files beside it (byte for byte
    the kit's) and the classifier's parameters; no mobilenetv3_preprocess. --check finds its classifier missing."""
    repo = tmp_path / "repo"
    build(BuildOptions(arch="small", output=repo, ensemble="u8", models=("u8",), image_model="fused",
                       config=ConfigOptions(target="local")))
    config = parse(repo / ENSEMBLE / "config.pbtxt")
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert config.backend == "python" and config.input[0].allow_ragged_batch and not (repo / PREPROCESS).exists()
    assert (config.output[0].name, list(config.output[0].dims), config.output[0].label_filename) == (
        ENSEMBLE_OUTPUT, [5], "labels.txt")
    assert (params["classifier"], params["classifier_input"], params["artifact"]) == (U8.name, "TYPE_UINT8", U8.artifact)
    assert queue_bound(config) == (32, 5_000_000)
    version = repo / ENSEMBLE / "1"
    for copy, source in (("model.py", "image_model.py"), ("mnv3kit_preprocessing.py", "preprocess_model.py"),
                         ("mnv3kit_classifier.py", "classifier_model.py"), ("mnv3kit_serving.py", "serving.py")):
        assert (version / copy).read_bytes() == (KIT_DIR / "backend" / source).read_bytes(), copy
    assert sorted(p.name for p in (version / VENDOR_DIR).iterdir()) == sorted(VENDORED)
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["ensemble"]["kind"] == "fused" and PREPROCESS not in manifest["models"]
    assert check_repository(repo).ok
    shutil.rmtree(repo / U8.name)
    problems = check_repository(repo).problems
    assert any(f"classifier '{U8.name}' has no {U8.artifact}" in m for m in problems), problems


STEP2 = f'model_name: "{PT.name}"'


@pytest.mark.parametrize("model,old,new,fragment", [
    (ENSEMBLE, STEP2, 'model_name: "mobilenetv3_missing"', "no model 'mobilenetv3_missing' in the repository"),
    (ENSEMBLE, 'key: "INPUT__0"', 'key: "INPUT__9"', "input_map key 'INPUT__9' is not an input of mobilenetv3_pt"),
    (ENSEMBLE, 'value: "preprocessed_image" }\n      output_map { key: "OUTPUT__0"',
     'value: "nowhere" }\n      output_map { key: "OUTPUT__0"', "'nowhere' is neither an ensemble input"),
    (ENSEMBLE, 'key: "OUTPUT__0"', 'key: "OUTPUT__7"', "output_map key 'OUTPUT__7' is not an output"),
    (ENSEMBLE, "dims: [ 5 ]", "dims: [ 6 ]", "ensemble output 'LOGITS' is TYPE_FP32 [6], the step producing it "
                                             "gives TYPE_FP32 [5]"),
    (ENSEMBLE, "dims: [ 5 ]", "dims: [ 6 ]", "labels.txt: 5 labels, output has 6"),
    (ENSEMBLE, "max_batch_size: 8", "max_batch_size: 16", "ensemble max_batch_size 16 exceeds the model's 8"),
    (ENSEMBLE, 'platform: "ensemble"', 'platform: "ensemble"\nbogus_field: 1', "bogus_field"),
    (PREPROCESS, "data_type: TYPE_FP32", "data_type: TYPE_UINT8",
     "'preprocessed_image' is TYPE_UINT8 [3, 224, 224], but mobilenetv3_pt input 'INPUT__0' is TYPE_FP32"),
    (PREPROCESS, "dims: [ 3, 224, 224 ]", "dims: [ 3, 299, 299 ]", "output dims [3, 299, 299], expected"),
    (PREPROCESS, "allow_ragged_batch: true", "allow_ragged_batch: false", "needs allow_ragged_batch"),
    (PREPROCESS, "data_type: TYPE_UINT8", "data_type: TYPE_STRING", "must be TYPE_UINT8 [-1]"),
    (PREPROCESS, 'input_data_file: "image.jpg"', 'input_data_file: "other.jpg"', "warmup/other.jpg: missing"),
    (PREPROCESS, 'name: "jpeg_batch_8"', 'name: "jpeg_batch_8"\n    bogus: 1', "bogus"),
])
def test_check_finds_each_ensemble_problem(repo, tmp_path, model, old, new, fragment):
    report = check_repository(damaged(repo, tmp_path, model, old, new), run_artifacts=False)
    assert any(fragment in p for p in report.problems), report.problems


def test_check_finds_missing_preprocessing_files(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    (copy / PREPROCESS / "1" / VENDOR_DIR / "preprocess.py").unlink()
    shutil.rmtree(copy / PT.name)
    problems = check_repository(copy, run_artifacts=False).problems
    assert any(f"{PREPROCESS}/1/{VENDOR_DIR}/preprocess.py: missing" in p for p in problems), problems
    assert any(f"no model '{PT.name}' in the repository" in p for p in problems), problems


def test_check_finds_a_warmup_file_of_another_size(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    (copy / PREPROCESS / WARMUP_DIR / WARMUP_FILE).write_bytes(b"\xff\xd8\xff" + bytes(100))
    problems = check_repository(copy, run_artifacts=False).problems
    assert any("model_warmup 'jpeg_batch_1'" in p and "has 103 bytes" in p for p in problems), problems


def test_an_unreadable_warmup_file_fails_the_load_cleanly(repo, tmp_path):
    """A warmup file Pillow cannot read fails the load with the sample's name, and only that: tritonserver exits 1,
    every time. Left to Triton's warmup, 2.51 aborted in 2 of 5 starts (boost::interprocess::lock_exception while it
    tore the failed instance down); the model checks its warmup files itself first. (The served repository's real
    JPEG is decoded at every start, see the served tests below.)"""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    warmup = copy / PREPROCESS / WARMUP_DIR / WARMUP_FILE
    rng = np.random.default_rng(0)
    for _ in range(4):
        warmup.write_bytes(rng.integers(0, 256, warmup.stat().st_size, dtype=np.uint8).tobytes())
        server = LocalTriton(copy, Ports.free())
        try:
            with pytest.raises(KitError, match=r"warmup sample 'jpeg_batch_1' \(warmup/image.jpg\): .*not an image"):
                server.start()
            assert server.proc.poll() == 1
        finally:
            server.close()


def test_gpu_path_takes_only_what_nvjpeg_decodes_like_pillow(photos, edge):
    assert all(gpu_decodable(p.read_bytes()) for p in photos)
    assert gpu_decodable(edge["huge"].read_bytes())
    for name in ("cmyk", "exif_rotated", "grayscale", "rgba", "palette", *BAD):
        data = edge[name].read_bytes() if edge[name].exists() else b""
        assert not gpu_decodable(data), name


def test_cpu_preprocess_of_bytes_is_the_kits_eval_transform(photos, edge):
    for path in [*photos, *(edge[name] for name in GOOD)]:
        np.testing.assert_array_equal(cpu_preprocess(path.read_bytes(), False), preprocess_file(path))
        np.testing.assert_array_equal(cpu_preprocess(path.read_bytes(), True), preprocess_file(path, pixels=True))


# ---------------------------------------------------------------- served

def infer(client, module, model, name, array, output, **kw):
    inp = module.InferInput(name, list(array.shape), "UINT8" if array.dtype == np.uint8 else "FP32")
    inp.set_data_from_numpy(array)
    return client.infer(model, [inp], outputs=[module.InferRequestedOutput(output, **kw)]).as_numpy(output)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_bytes_give_identical_logits_to_client_side_preprocessing(server, photos, edge, protocol):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    module = http if protocol == "http" else grpc
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    for path in [*photos, *(edge[name] for name in GOOD)]:
        encoded = np.frombuffer(path.read_bytes(), np.uint8)[None]
        served = infer(client, module, ENSEMBLE, IMAGE_INPUT, encoded, ENSEMBLE_OUTPUT)
        reference = infer(client, module, PT.name, PT.input_name, preprocess_file(path)[None], PT.output_name)
        np.testing.assert_array_equal(served, reference, err_msg=str(path))
        # Triton's classification extension on the ensemble's output: labels from its label_filename
        top = infer(client, module, ENSEMBLE, IMAGE_INPUT, encoded, ENSEMBLE_OUTPUT, class_count=2)[0]
        index = int(reference[0].argmax())
        assert top[0].decode().split(":")[1:] == [str(index), f"class_{index}"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classify_cli_sends_files_as_bytes(server, photos, edge, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    bad = [edge[name] for name in ("not_an_image", "truncated", "empty", "missing")]
    inputs = [photos[0], *bad, photos[1], edge["cmyk"]]
    proc = run_cli("client/classify.py", "--json", *inputs, "-m", ENSEMBLE, "-u", url, "-i", protocol, "-b", "4")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in records] == list(map(str, inputs))
    for record, path in zip(records, inputs):
        if path in bad:
            assert BAD[path.stem if path.stem in BAD else "missing"] in record["error"], record
        else:
            expected = json.loads(run_cli("client/classify.py", "--json", path, "-m", PT.name, "-u", url, "-i",
                                          protocol).stdout)
            # the ensemble may batch this file with others: FP32 logits then differ within the parity gate's rule
            assert [t["index"] for t in record["top"]] == [t["index"] for t in expected["top"]]
            np.testing.assert_allclose(record["logits"], expected["logits"], rtol=0,
                                       atol=allowed_difference(np.array(expected["logits"])))
    assert f"{len(bad)} of {len(inputs)} images could not be read" in proc.stderr
    proc = run_cli("client/classify.py", photos[0], "-m", PT.name, "-u", url, "-i", protocol, "--send", "bytes")
    assert_one_line_error(proc, "takes tensors", "not bytes")


def test_curl_with_the_binary_tensor_extension(server, photos, edge):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    script = (  # docs/classify.md's example, with this server's port; the HTTP status on the last line
        'HEADER=\'{"inputs":[{"name":"IMAGE","shape":[1,\'$(stat -c %s "$IMG")\'],"datatype":"UINT8",'
        '"parameters":{"binary_data_size":\'$(stat -c %s "$IMG")\'}}],'
        '"outputs":[{"name":"LOGITS","parameters":{"classification":3}}]}\'\n'
        '{ printf %s "$HEADER"; cat "$IMG"; } | curl -s -w "\\n%{http_code}" '
        f'localhost:{server.ports.http}/v2/models/{ENSEMBLE}/infer '
        '-H "Inference-Header-Content-Length: ${#HEADER}" --data-binary @-')

    def curl(path):
        proc = subprocess.run(["bash", "-c", script], env={"IMG": str(path), "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        body, status = proc.stdout.rsplit("\n", 1)
        return json.loads(body), int(status)

    body, status = curl(photos[0])
    output = body["outputs"][0]
    assert status == 200 and output["name"] == ENSEMBLE_OUTPUT and output["shape"] == [1, 3]
    assert all(len(entry.split(":")) == 3 for entry in output["data"])
    body, status = curl(edge["not_an_image"])
    assert status == 400 and body == {"error": f"in ensemble '{ENSEMBLE}', image: not an image Pillow can read"}


def test_run_perf_measures_the_ensemble_with_real_jpegs(server, photos, tmp_path):
    out = tmp_path / "perf"
    proc = subprocess.run(["bash", str(ROOT / "perf" / "run_perf.sh"), "--quick", "-u", server.grpc_url, "-i", "grpc",
                           "-m", f"{ENSEMBLE},{PT.name}", "-b", "1,2", "-o", str(out),
                           "--stability", "1000"],  # correctness, not numbers: a busy CI machine must not fail it
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, ADMIN_KEY_ENV: server.admin_key})  # perf_analyzer reads statistics
    assert proc.returncode == 0, proc.stderr  # zeros or random bytes instead of the files would fail every point
    data = json.loads((out / "inputs" / f"{ENSEMBLE}.json").read_text())["data"]
    assert [base64.b64decode(d[IMAGE_INPUT]["b64"]) for d in data] == [p.read_bytes() for p in photos]
    assert [d[IMAGE_INPUT]["shape"] for d in data] == [[p.stat().st_size] for p in photos]
    report = (out / "report.md").read_text()
    assert "china.jpg, flower.jpg" in report
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in report.split("## Throughput and latency")[1].split("## Where")[0].splitlines()
            if line.startswith(f"| {ENSEMBLE}/") or line.startswith(f"| {PT.key}/")}
    assert sorted(rows) == sorted([f"{ENSEMBLE}/1", f"{ENSEMBLE}/2", f"{PT.key}/1", f"{PT.key}/2"])
    # bytes sent per image: the files; at batch 2 zero-padded to the longest (one request needs equal lengths)
    sizes = [p.stat().st_size for p in photos]
    expected = {f"{ENSEMBLE}/1": round(sum(sizes) / len(sizes)), f"{ENSEMBLE}/2": max(sizes),
                f"{PT.key}/1": 3 * 224 * 224 * 4, f"{PT.key}/2": 3 * 224 * 224 * 4}
    for label, cells in rows.items():
        assert float(cells[1]) > 0, (label, cells)  # throughput
        assert cells[2] == f"{expected[label]:,}", (label, cells)


# ---------------------------------------------------------------- one bad image in a batch

@pytest.fixture(scope="module", params=["ensemble", "fused"])
def batching_server(request, tmp_path_factory):
    """u8 classifier behind the image model (the ensemble, or fused into one model); batches wait up to 3 s for 8
    requests. Yields the server and the model that batches the files."""
    out = tmp_path_factory.mktemp("image-batch") / "repo"
    build(BuildOptions(arch="small", output=out, ensemble="u8", models=("u8",), image_model=request.param,
                       config=ConfigOptions(target="local", instances=Instances("KIND_CPU"),
                                            batching=Batching(True, (8,), BATCH_DELAY_US))))
    batcher = PREPROCESS if request.param == "ensemble" else ENSEMBLE
    assert (parse(out / batcher / "config.pbtxt").output[0].data_type
            == (model_config_pb2.TYPE_UINT8 if batcher == PREPROCESS else model_config_pb2.TYPE_FP32))
    assert request.param == "ensemble" or not (out / PREPROCESS).exists()
    with LocalTriton(out, Ports.free()) as srv:
        yield srv, batcher


def test_bad_images_fail_alone_inside_one_batch(batching_server, photos, edge):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    batching_server, batcher = batching_server
    client = grpc.InferenceServerClient(batching_server.grpc_url)
    good = [photos[0], photos[1], edge["grayscale"], edge["exif_rotated"]]
    bad = [edge[name] for name in ("not_an_image", "truncated", "empty", "bomb")]
    paths = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], good[3]]
    results, done = {}, threading.Semaphore(0)

    def statistics():  # counts since load, model_warmup's included
        stats = client.get_inference_statistics(batcher, as_json=True, headers=batching_server.headers("grpc"))
        stats = stats["model_stats"][0]
        return (int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0)),
                {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])})

    before = statistics()

    def callback(path, result, error):
        results[path] = error if error is not None else result.as_numpy(ENSEMBLE_OUTPUT)
        done.release()

    for path in paths:  # all 8 in flight at once: the batching model sees them as one batch
        inp = grpc.InferInput(IMAGE_INPUT, [1, path.stat().st_size], "UINT8")
        inp.set_data_from_numpy(np.frombuffer(path.read_bytes(), np.uint8).reshape(1, -1))
        client.async_infer(ENSEMBLE, [inp], lambda result, error, path=path: callback(path, result, error))
    for _ in paths:
        assert done.acquire(timeout=60)
    after = statistics()
    assert (after[0] - before[0], after[1] - before[1]) == (1, len(paths)), (before, after)
    assert {size: n - before[2].get(size, 0) for size, n in after[2].items() if n != before[2].get(size, 0)} \
        == {len(paths): 1}, (before, after)  # one execution, of all 8 images
    for path in bad:
        assert isinstance(results[path], InferenceServerException), path
        assert results[path].status() == "StatusCode.INVALID_ARGUMENT"
        assert BAD[path.stem] in results[path].message() and "Traceback" not in results[path].message()
    classifier = grpc.InferenceServerClient(batching_server.grpc_url)
    for path in good:
        pixels = preprocess_file(path, pixels=True)[None]
        expected = infer(classifier, grpc, U8.name, U8.input_name, pixels, U8.output_name)
        # batched with others vs alone: the same up to FP32 summation order
        np.testing.assert_allclose(results[path], expected, rtol=0, atol=allowed_difference(expected))
    assert client.is_server_ready() and client.is_model_ready(ENSEMBLE)


# ---------------------------------------------------------------- NGC target: DALI

def load_dali_pipeline(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mnv3kit_dali_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ngc_repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("image-ngc") / "repo"
    build(BuildOptions(arch="small", output=out, ensemble="trt", config=ConfigOptions(target="ngc")))
    return out


def test_ngc_build_renders_the_dali_ensemble(ngc_repo):
    ensemble, pre = parse(ngc_repo / ENSEMBLE / "config.pbtxt"), parse(ngc_repo / PREPROCESS / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [PREPROCESS, TRT.name]
    assert pre.backend == "dali" and pre.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (ngc_repo / PREPROCESS / "1" / "dali.py").read_text() == render_dali_pipeline()
    assert not (ngc_repo / PREPROCESS / "1" / "model.py").exists()
    report = check_repository(ngc_repo)
    assert report.ok, report.problems  # the plan is built later, in NVIDIA's image: a note, not a problem


def test_dali_pipeline_matches_the_kits_preprocessing(ngc_repo, photos, edge, tmp_path):
    """The NGC pipeline on DALI's CPU operators (the nvidia-dali wheel) vs mnv3kit.preprocess, then the classifier."""
    import warnings

    import nvidia.dali as dali
    import torch

    module = load_dali_pipeline(ngc_repo / PREPROCESS / "1" / "dali.py")
    files = [*photos, *make_jpegs(photos, tmp_path, (500, 375)), *(edge[name] for name in DALI_SAME)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pipe = dali.pipeline_def(module.graph)("cpu", batch_size=len(files), num_threads=2, device_id=None)
        pipe.build()
        pipe.feed_input(IMAGE_INPUT, [np.frombuffer(f.read_bytes(), np.uint8) for f in files])
        (out,) = pipe.run()
    served = np.stack([np.asarray(out[i]) for i in range(len(files))])
    reference = np.stack([preprocess_file(f) for f in files])
    one_level = 1 / 255 / min(STD)  # one uint8 step after normalization
    assert np.abs(served - reference).max() <= one_level + 1e-6
    classifier = torch.jit.load(str(ngc_repo / PT.name / "1" / PT.artifact))
    with torch.no_grad():
        a, b = classifier(torch.from_numpy(served)).numpy(), classifier(torch.from_numpy(reference)).numpy()
    assert (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() <= DALI_LOGIT_TOLERANCE * max(1.0, float(np.abs(b).max()))
