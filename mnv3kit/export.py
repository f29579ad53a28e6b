"""TorchScript (for pytorch_libtorch) and ONNX (dynamic batch, simplified) exports of the model."""

import io
import warnings
from pathlib import Path

import onnx
import torch

from .errors import KitError
from .spec import INPUT_DIMS, ONNX

ONNX_OPSET = 17
BATCH_DIM = "batch"


def export_torchscript(model: torch.nn.Module, path: Path, batch: int = 1) -> None:
    """Trace in eval mode; libtorch then serves it with INPUT__0 -> OUTPUT__0 (positional names)."""
    example = torch.zeros((batch, *INPUT_DIMS))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    torch.jit.save(traced, str(path))


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """ONNX with a dynamic batch axis on input and output, then onnxsim (BN fusion, constant folding)."""
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), torch.zeros((1, *INPUT_DIMS)), buf,
            input_names=[ONNX.input_name], output_names=[ONNX.output_name],
            dynamic_axes={ONNX.input_name: {0: BATCH_DIM}, ONNX.output_name: {0: BATCH_DIM}},
            opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    proto = simplify_onnx(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def simplify_onnx(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    import onnxsim

    simplified, ok = onnxsim.simplify(proto, check_n=0, skip_fuse_bn=False, certify=False)
    if not ok:
        raise KitError("onnxsim could not validate the simplified ONNX model; report this with the onnxsim version")
    return simplified


def export_program(model: torch.nn.Module, path: Path, max_batch: int) -> None:
    """torch.export program with a dynamic batch dimension 1..max_batch (model.pt2): what --runtime compiled serves.
    TorchInductor compiles it where it is served, for that GPU; the program itself holds no device code."""
    from torch.export import Dim

    batch = Dim(BATCH_DIM, min=1, max=max(2, max_batch))
    example = torch.zeros((2, *INPUT_DIMS))
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
