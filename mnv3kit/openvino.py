"""OpenVINO: the IR (model.xml + model.bin) of the kit's model.onnx and the CPU's BF16 capability (BF16 is served only
past the accuracy gate of gate.py).

The IR is converted from the ONNX file the parity gate already checked, with OpenVINO's own converter: the graph is
the same as from the torch module, and only the ONNX route keeps the tensor names (`image` -> `outputs`) the configs
name. Weights stay FP32 (``compress_to_fp16=False``; the converter's default FP16 weights would move the logits
whatever precision the CPU then computes in). The UINT8 model (OV_U8) is the same IR with OpenVINO's PrePostProcessor
in front: u8 -> f32, minus 255 * mean, divided by 255 * std, per channel, inside the graph.
"""

from pathlib import Path
from typing import List

import numpy as np

from .errors import HOW_TO_INSTALL, KitError
from .spec import INPUT_DIMS, MEAN, OV, OV_WEIGHTS, STD, ModelSpec

PRECISIONS = ("fp32", "bf16")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise KitError(f"the {OV.name} model needs OpenVINO (the openvino extra, pip package `openvino`): "
                       f"{HOW_TO_INSTALL}") from None
    return openvino


def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin computes in BF16 here (AVX512_BF16 or AMX): its capability list says so."""
    return "BF16" in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def export_openvino(onnx_path: Path, version_dir: Path, spec: ModelSpec = OV) -> Path:
    """model.xml and model.bin in ``version_dir``, FP32 weights, the ONNX file's dynamic batch dimension kept; for a
    UINT8 ``spec``, the normalization in the graph and the input named as the spec says."""
    ov = import_openvino()
    model = ov.convert_model(str(onnx_path))
    shape = model.input(0).get_partial_shape()
    if shape.rank.get_length() != len(INPUT_DIMS) + 1 or shape[0].is_static:
        raise KitError(f"{onnx_path}: input {shape} after conversion, expected [?,{','.join(map(str, INPUT_DIMS))}]")
    if spec.input_dtype == "TYPE_UINT8":
        ppp = ov.preprocess.PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        ppp.input().preprocess().convert_element_type(ov.Type.f32) \
            .mean([255.0 * m for m in MEAN]).scale([255.0 * s for s in STD])
        model = ppp.build()
        model.input(0).get_tensor().set_names({spec.input_name})
    xml = Path(version_dir) / spec.artifact
    ov.save_model(model, str(xml), compress_to_fp16=False)
    if not xml.with_name(OV_WEIGHTS).is_file():
        raise KitError(f"OpenVINO wrote {xml} without {OV_WEIGHTS}")
    return xml


def check_ir(xml: Path, max_batch: int, classes: int, spec: ModelSpec = OV) -> List[str]:
    """What --check finds wrong with an IR served as ``spec``: its weights file, tensor names and input type, or its
    output at max batch on the CPU."""
    weights = xml.with_name(OV_WEIGHTS)
    if not weights.is_file():
        return [f"{weights}: missing (the IR's weights, beside {xml.name})"]
    ov = import_openvino()
    try:
        core = ov.Core()
        model = core.read_model(str(xml))
        names = (model.input(0).get_names(), model.output(0).get_names())
        if spec.input_name not in names[0] or spec.output_name not in names[1]:
            return [f"{xml}: tensors {sorted(names[0])}->{sorted(names[1])}, config expects "
                    f"{spec.input_name!r}->{spec.output_name!r}"]
        dtype = np.uint8 if spec.input_dtype == "TYPE_UINT8" else np.float32
        if model.input(0).get_element_type().to_dtype() != dtype:
            return [f"{xml}: input type {model.input(0).get_element_type()}, config expects {spec.input_dtype}"]
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out = compiled(np.zeros((max_batch, *INPUT_DIMS), dtype))[compiled.output(0)]
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"{xml}: does not run on [{max_batch},{','.join(map(str, INPUT_DIMS))}]: {first}"]
    if out.shape != (max_batch, classes):
        return [f"{xml}: output shape {out.shape} at batch {max_batch}, expected ({max_batch}, {classes})"]
    return []


