"""docker-compose.yml, parsed by a real Compose implementation, agrees with what build_repo.py rendered."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT
from mnv3kit.spec import MODELS, ONNX, TRT
from mnv3kit.validate import parse_config

COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose missing: `make venv` installs it "
                                "(scripts/install_system_deps.sh)")


KEY = "k3y-for-the-test"


def compose_config(repo, *files, **env):
    files = [arg for f in ("docker-compose.yml", *files) for arg in ("-f", str(ROOT / f))]
    proc = subprocess.run([COMPOSE, *files, "config"], cwd=ROOT, text=True, capture_output=True,
                          env={**os.environ, "MODEL_REPOSITORY": str(repo), "TRITON_ADMIN_KEY": KEY, **env})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["services"]


def flag(command, name):
    return next(c.split("=", 1)[1] for c in command if c.startswith(f"--{name}="))


def test_triton_service_matches_the_rendered_repository(built_repo):
    repo = built_repo("small", "ngc")
    services = compose_config(repo)
    triton, build = services["triton"], services["trt-build"]
    assert triton["image"] == build["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51.0
    command = triton["command"]
    assert command[0] == "tritonserver"
    assert flag(command, "model-control-mode") == "none" and flag(command, "strict-readiness") == "true"
    mount = flag(command, "model-repository")
    assert f"{repo}:{mount}:ro" in triton["volumes"]
    assert f"{repo}:{mount}:rw" in build["volumes"]
    ports = {int(p.split(":")[-1].split("/")[0]): p for p in triton["ports"]}
    for name in ("http", "grpc", "metrics"):
        container_port = int(flag(command, f"{name}-port"))
        assert ports[container_port].startswith("127.0.0.1:")  # not exposed beyond the host by default
    health = " ".join(triton["healthcheck"]["test"])
    assert f"localhost:{flag(command, 'http-port')}/v2/health/ready" in health
    assert triton["depends_on"]["trt-build"]["condition"] == "service_completed_successfully"
    assert triton["user"] and triton["user"] != "root"
    assert triton["restart"] == "unless-stopped"
    admin = "shared-memory,model-repository,statistics,trace,logging:admin-key=" + KEY
    assert flag(command, "http-restricted-api") == admin and flag(command, "grpc-restricted-protocol") == admin
    assert int(flag(command, "exit-timeout-secs")) <= 5
    assert triton["read_only"] is True and triton["tmpfs"] == ["/tmp:exec,mode=1777"]
    for service in (triton, build):
        assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"]
        assert service["user"] and service["user"] != "root"
    for service in (triton, build):
        assert service["runtime"] == "nvidia" and service["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    # every model the repository holds is a kit model; trt-build gets the mount as the directory it builds in
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(m.name for m in MODELS)
    assert build["entrypoint"][-1] == mount


def test_trtexec_shapes_agree_with_the_trt_config(built_repo):
    repo = built_repo("small", "ngc")
    config = parse_config(repo / TRT.name / "config.pbtxt")
    script = (repo / TRT.name / "build_plan.sh").read_text()
    shapes = dict(re.findall(r"--(min|opt|max)Shapes=(\S+)", script))
    dims = "x".join(str(d) for d in config.input[0].dims)
    name = config.input[0].name
    assert shapes["min"] == f"{name}:1x{dims}"
    assert shapes["max"] == f"{name}:{config.max_batch_size}x{dims}"
    assert shapes["opt"] == f"{name}:4x{dims}"
    assert f"../{ONNX.name}/1/{ONNX.artifact}" in script and (repo / ONNX.name / "1" / ONNX.artifact).is_file()


def test_environment_overrides(built_repo):
    services = compose_config(built_repo("small", "ngc"), TRITON_IMAGE_TAG="24.12", TRITON_BIND="0.0.0.0",
                              TRITON_HTTP_PORT="9000")
    assert services["triton"]["image"] == "nvcr.io/nvidia/tritonserver:24.12-py3"
    assert "0.0.0.0:9000:8000/tcp" in services["triton"]["ports"]


def trt_build_entrypoint(services, repo):
    """trt-build's entrypoint as the container runs it (``$$`` is Compose's escape for ``$``), with the host path of
    the repository in place of its mount point (the entrypoint's last argument)."""
    mount = flag(services["triton"]["command"], "model-repository")
    command = [part.replace("$$", "$") for part in services["trt-build"]["entrypoint"]]
    assert command[-1] == mount
    return command[:-1] + [str(repo)]


@pytest.mark.parametrize("models", [None, ("pt", "onnx"), ("onnx",)])
def test_trt_build_entrypoint_runs_for_every_models_subset(built_repo, tmp_path, models):
    """With mobilenetv3_trt it runs build_plan.sh (here: its trtexec guard); without it, it is a no-op that succeeds,
    so `triton` (depends_on: service_completed_successfully) starts for every --models subset."""
    repo = built_repo("small", "ngc", models)
    command = trt_build_entrypoint(compose_config(repo), repo)
    proc = subprocess.run(command, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TRTEXEC": str(tmp_path / "no-trtexec")})
    if models is None:
        assert proc.returncode == 2 and "build_plan.sh: trtexec not found" in proc.stderr
    else:
        assert not (repo / TRT.name).exists()
        assert proc.returncode == 0 and "nothing to build" in proc.stdout, proc.stderr


def test_admin_key_is_required(built_repo):
    proc = subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, "MODEL_REPOSITORY": str(built_repo("small", "ngc")),
                                                    "TRITON_ADMIN_KEY": ""})
    assert proc.returncode != 0 and "set TRITON_ADMIN_KEY" in proc.stderr


def test_cpu_override_keeps_the_hardening(built_repo):
    triton = compose_config(built_repo("small", "local"), "docker-compose.cpu.yml")["triton"]
    assert triton["environment"]["TRITON_ADMIN_KEY"] == KEY  # serve.py restricts the same APIs with it
    assert triton["command"][triton["command"].index("--address") + 1] == "0.0.0.0"  # inside the container
    assert all(p.startswith("127.0.0.1:") for p in triton["ports"])
    assert triton["read_only"] is True and triton["cap_drop"] == ["ALL"]


def test_plan_script_guards_run_for_real(built_repo, tmp_path):
    """The rendered script refuses clearly without trtexec or without the ONNX (what it can do without a GPU)."""
    repo = tmp_path / "repo"
    shutil.copytree(built_repo("small", "ngc"), repo)
    script = repo / TRT.name / "build_plan.sh"
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TRTEXEC": str(tmp_path / "no-trtexec")})
    assert proc.returncode == 2 and "trtexec not found" in proc.stderr
    (repo / ONNX.name / "1" / ONNX.artifact).unlink()
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "model.onnx is missing" in proc.stderr
