import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnv3kit.build import BuildOptions, build  # noqa: E402
from mnv3kit.parity import sample_photos  # noqa: E402
from mnv3kit.render import ConfigOptions, Instances  # noqa: E402


def run_cli(script, *args, cwd=ROOT, timeout=600):
    """Run one of the kit's CLIs as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    """Non-zero exit, no traceback, one `prog: error:` line naming the cause."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def photos():
    return sample_photos()


_BUILT = {}


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory):
    """build_repo for (arch, target, models), once per session: random-init weights, default flags."""

    def get(arch="small", target="local", models=None):
        key = (arch, target, models)
        if key not in _BUILT:
            name = f"repo-{arch}-{target}" + (f"-{'-'.join(models)}" if models else "")
            out = tmp_path_factory.mktemp(name) / "model_repository"
            kind = "KIND_CPU" if target == "local" else "KIND_GPU"
            build(BuildOptions(arch=arch, output=out, models=models,
                               config=ConfigOptions(target=target, instances=Instances(kind))))
            _BUILT[key] = out
        return _BUILT[key]

    return get
