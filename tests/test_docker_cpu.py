"""`docker-compose -f docker-compose.yml -f docker-compose.cpu.yml up triton`, for real, on the kit's CPU image.

scripts/docker_setup.sh installs Docker from Debian's packages when missing, starts the daemon and makes the base
image with debootstrap (no image registry is reachable here). Where the daemon cannot run, the test is skipped with
the reason; docs/serve.md says which commands to run by hand.
"""

import itertools
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli
from mnv3kit.export import export_torchscript
from mnv3kit.parity import allowed_difference
from mnv3kit.preprocess import preprocess_file
from mnv3kit.server import Ports
from mnv3kit.spec import ONNX, OV
from mnv3kit.weights import load_model

PROJECT = "mnv3kitci"
COMPOSE = ["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml", "-p", PROJECT]


def run(cmd, env=None, timeout=900, check=True):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def base_image():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "docker_setup.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode == 3:
        pytest.skip(f"Docker cannot run here ({proc.stderr.strip().splitlines()[-1]}); on a Docker host run the "
                    f"commands of docs/serve.md 'On a machine without a GPU: the CPU image' by hand")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def project_containers():
    out = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"]).stdout
    return out.split()


def wait_healthy(env, timeout=180):
    deadline = time.time() + timeout
    status = "?"
    while time.time() < deadline:
        cid = run(COMPOSE + ["ps", "-q", "triton"], env=env).stdout.strip()
        if cid:
            state = json.loads(run(["docker", "inspect", cid]).stdout)[0]
            status = state["State"].get("Health", {}).get("Status", "?")
            if status == "healthy":
                return state
            if state["State"]["Status"] in ("exited", "dead"):
                break
        time.sleep(2)
    logs = run(COMPOSE + ["logs", "--tail", "30", "triton"], env=env, check=False)
    pytest.fail(f"triton not healthy (last status {status}):\n{logs.stdout}{logs.stderr}")


def test_compose_cpu_up_classify_down(base_image, tmp_path, photos):
    repo = tmp_path / "model_repository_cpu"
    proc = run_cli("build_repo.py", "--target", "local", "--models", "onnx,ov", "--arch", "small", "-o", repo)
    assert proc.returncode == 0, proc.stderr
    ports = Ports.free()
    env = {**os.environ, "BASE_IMAGE": base_image, "MODEL_REPOSITORY": str(repo),
           "TRITON_HTTP_PORT": str(ports.http), "TRITON_GRPC_PORT": str(ports.grpc),
           "TRITON_METRICS_PORT": str(ports.metrics), "TRITON_ADMIN_KEY": "docker-test-key"}
    run(COMPOSE + ["down", "--remove-orphans"], env=env, check=False)  # a previous run killed midway
    try:
        run(COMPOSE + ["build", "triton"], env=env)
        run(COMPOSE + ["up", "-d", "triton"], env=env)
        state = wait_healthy(env)
        assert state["Config"]["User"] == "triton-server"
        mount = next(m for m in state["Mounts"] if m["Destination"] == "/models")
        assert mount["Source"] == str(repo) and mount["RW"] is False
        assert all(b["HostIp"] == "127.0.0.1" for b in state["HostConfig"]["PortBindings"]["8000/tcp"])
        host = state["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and "no-new-privileges:true" in host["SecurityOpt"]
        index = f"http://localhost:{ports.http}/v2/repository/index"
        with pytest.raises(urllib.error.HTTPError, match="403"):  # admin APIs need the key
            urllib.request.urlopen(urllib.request.Request(index, data=b"{}"), timeout=30)
        request = urllib.request.Request(index, data=b"{}", headers={"admin-key": env["TRITON_ADMIN_KEY"]})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())[0]["state"] == "READY"

        model = load_model("small", None)[0]  # the same seeded weights the build used
        export_torchscript(model, tmp_path / "reference.pt")
        scripted = torch.jit.load(str(tmp_path / "reference.pt"))
        with torch.no_grad():
            expected = scripted(torch.from_numpy(np.stack([preprocess_file(p) for p in photos]))).numpy()
        for (protocol, port), model in itertools.product((("http", ports.http), ("grpc", ports.grpc)), (ONNX, OV)):
            proc = run_cli("client/classify.py", *photos, "-u", f"localhost:{port}", "-i", protocol,
                           "-m", model.name, "-b", "2", "--json")
            assert proc.returncode == 0, proc.stderr
            served = np.array([json.loads(line)["logits"] for line in proc.stdout.splitlines()], np.float32)
            np.testing.assert_allclose(served, expected, rtol=0, atol=allowed_difference(expected) + 1e-6)
    finally:
        down = run(COMPOSE + ["down", "--remove-orphans", "-t", "20"], env=env, check=False)
    assert down.returncode == 0, down.stderr
    assert project_containers() == []
    networks = run(["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"])
    assert networks.stdout.split() == []
