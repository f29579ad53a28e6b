"""Files copied into model repositories (not imported by the kit itself)."""

import shutil
from pathlib import Path

PYTHON_MODEL = Path(__file__).with_name("classifier_model.py")
PREPROCESS_MODEL = Path(__file__).with_name("preprocess_model.py")
# --image-model fused: one model that preprocesses and classifies; it imports the two models above, copied beside it
IMAGE_MODEL = Path(__file__).with_name("image_model.py")
FUSED_COPIES = {PREPROCESS_MODEL: "mnv3kit_preprocessing.py", PYTHON_MODEL: "mnv3kit_classifier.py"}
# The request queue both models import, copied beside their model.py under a name an installed kit cannot shadow.
SERVING_MODULE = Path(__file__).with_name("serving.py")
SERVING_COPY = "mnv3kit_serving.py"
PYTHON_MODEL_FILES = ("model.py", SERVING_COPY)  # what every python-backend version directory of the kit holds
# What PREPROCESS_MODEL imports from the kit, copied beside it as <version>/mnv3kit_preprocess/ (the preprocessing
# and the modules it imports; another name than the kit's, so an installed kit does not shadow it): the repository
# stays self-contained.
KIT_DIR = Path(__file__).resolve().parent.parent
VENDORED = ("__init__.py", "errors.py", "spec.py", "preprocess.py")


def install_python_model(model: Path, version_dir: Path) -> None:
    """``model`` as version_dir/model.py, with the request queue it imports beside it."""
    shutil.copyfile(model, version_dir / "model.py")
    shutil.copyfile(SERVING_MODULE, version_dir / SERVING_COPY)
