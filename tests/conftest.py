import os
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parent.parent

import mnv3kit.validate
from mnv3kit.build import BuildOptions, build
from mnv3kit.parity import sample_photos
from mnv3kit.render import ConfigOptions, Instances


def run_cli(script, *args, cwd=ROOT, timeout=600, env=None):
    """Run one of the kit's CLIs as a user would (env: variables to add); returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_line_error(proc, *fragments):
    """Non-zero exit, no traceback, one `prog: error:` line naming the cause."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def start_serve_py(repo, ports, *extra):
    """serve.py on `repo` with these ports, once it printed that it is ready (stdout/stderr are pipes)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--repo", str(repo), "--http-port",
                             str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    first = proc.stdout.readline()
    if "ready" not in first:
        proc.kill()
        pytest.fail(first + proc.stderr.read())
    assert "mobilenetv3_pt" in first and "mobilenetv3_onnx" in first, first
    return proc


@pytest.fixture(scope="session")
def photos():
    return sample_photos()


_BUILT = {}


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory):
    """build_repo for (arch, target, models, ensemble), once per session: random-init weights, default flags.
    Tests that change a repository change a copy."""

    def get(arch="small", target="local", models=None, ensemble=None):
        key = (arch, target, models, ensemble)
        if key not in _BUILT:
            name = (f"repo-{arch}-{target}" + (f"-{'-'.join(models)}" if models else "")
                    + (f"-image-{ensemble}" if ensemble else ""))
            out = tmp_path_factory.mktemp(name) / "model_repository"
            kind = "KIND_CPU" if target == "local" else "KIND_GPU"
            build(BuildOptions(arch=arch, output=out, models=models, ensemble=ensemble,
                               config=ConfigOptions(target=target, instances=Instances(kind))))
            _BUILT[key] = out
        return _BUILT[key]

    return get


def queue_bound(config):
    """(max_queue_size, timeout µs) of a config: Triton's queue policy for native backends, the parameters the kit's
    python-backend models keep it in (mnv3kit/backend/serving.py says why), never both."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    if config.backend == "python":
        assert not config.dynamic_batching.HasField("default_queue_policy")
    else:
        policy = config.dynamic_batching.default_queue_policy
        assert "max_queue_size" not in params
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT and policy.allow_timeout_override
    return mnv3kit.validate.queue_bound(config)


def markdown_table(markdown, first_header):
    """Cells of each row of the Markdown table whose header starts with ``| first_header |``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows
