"""MobileNetV3 -> Triton Inference Server deployment kit."""

import importlib
import platform

__version__ = "0.2.0"


def versions(*modules: str) -> dict:
    """The kit's, Python's and each module's version (None where it does not import): recorded with every build
    and benchmark."""
    found = {"kit": __version__, "python": platform.python_version()}
    for name in modules:
        try:
            found[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - TensorRT's import can fail in many ways; absent is the answer
            found[name] = None
    return found
