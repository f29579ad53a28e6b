"""Files copied into model repositories (not imported by the kit itself)."""

from pathlib import Path

PYTHON_MODEL = Path(__file__).with_name("model.py")
PREPROCESS_MODEL = Path(__file__).with_name("preprocess_model.py")
# What PREPROCESS_MODEL imports from the kit, copied beside it as <version>/mnv3kit_preprocess/ (the preprocessing
# and the modules it imports; another name than the kit's, so an installed kit does not shadow it): the repository
# stays self-contained.
KIT_DIR = Path(__file__).resolve().parent.parent
VENDORED = ("__init__.py", "errors.py", "spec.py", "preprocess.py")
