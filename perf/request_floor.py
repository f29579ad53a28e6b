#!/usr/bin/env python3
"""The request path alone: perf/regression.py on a model that computes almost nothing, served the same way.

  python perf/request_floor.py --repo model_repository_local -o perf/out/request-floor --server-cpus 0 --client-cpus 1

Copies REPO (a --target local repository with mobilenetv3_onnx) to OUT/repo and replaces that model's model.onnx by
one of the same contract (input `image` [N,3,224,224] FP32, output `outputs` [N,classes]) that takes the mean of each
channel and multiplies by a fixed 3 × classes matrix: a few microseconds of compute, so what the servers spend per
request is gRPC, tritonserver, the python backend's stub and the model's request handling. Then perf/regression.py
serves it with the kit's server and PyTriton, every answer checked against ONNX Runtime in-process; any other flag
is regression.py's (--rounds, --seconds, -c, --server-cpus, --client-cpus). The kit's img/s per server core here
bounds what a real model can reach served: a request costs the model's time plus this floor's.
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

import regression
from mnv3kit.errors import KitError, cli_errors
from mnv3kit.spec import IMAGE_SIZE, ONNX
from mnv3kit.validate import parse_config


def floor_model(path: Path, classes: int) -> None:
    """model.onnx: ReduceMean over H and W, then MatMul by a seeded 3 × classes matrix (opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((3, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [ONNX.input_name], ["means"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["means", "weights"], [ONNX.output_name])],
        "request_floor",
        [helper.make_tensor_value_info(ONNX.input_name, TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info(ONNX.output_name, TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weights, "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="perf/request_floor.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="a --target local repository with mobilenetv3_onnx")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory (OUT/repo: the copy)")
    args, rest = p.parse_known_args(argv)  # the rest is regression.py's
    with cli_errors(p.prog):
        config = args.repo / ONNX.name / "config.pbtxt"
        if not config.is_file():
            raise KitError(f"{args.repo} has no {ONNX.name}: build it with -m onnx (python build_repo.py --target "
                           f"local -m onnx -o {args.repo})")
        copy = args.output / "repo"
        if copy.exists():
            raise KitError(f"{copy} exists: give a new -o folder")
        shutil.copytree(args.repo, copy)
        floor_model(copy / ONNX.name / "1" / ONNX.artifact, parse_config(config).output[0].dims[-1])
    return regression.main(["--repo", str(copy), "-o", str(args.output), "-m", ONNX.name, *rest])


if __name__ == "__main__":
    sys.exit(main())
