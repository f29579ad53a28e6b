"""Files copied into model repositories (not imported by the kit itself)."""

from pathlib import Path

PYTHON_MODEL = Path(__file__).with_name("model.py")
