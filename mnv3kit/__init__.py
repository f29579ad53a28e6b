"""MobileNetV3 -> Triton Inference Server deployment kit."""

__version__ = "0.1.0"
