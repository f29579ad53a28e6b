"""Files copied into model repositories (not imported by the kit itself)."""

from pathlib import Path

PYTHON_MODEL = Path(__file__).with_name("model.py")
PREPROCESS_MODEL = Path(__file__).with_name("preprocess_model.py")
# What PREPROCESS_MODEL imports from the kit, copied beside it as <version>/mnv3kit/ (the preprocessing itself and
# the modules it imports): the repository stays self-contained.
KIT_DIR = Path(__file__).resolve().parent.parent
VENDORED = ("__init__.py", "errors.py", "spec.py", "preprocess.py")
