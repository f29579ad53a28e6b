#!/usr/bin/env python3
"""PyTriton serving the model.pt, model.onnx and model.xml (both IRs) a kit repository holds: the reference the kit's own server is measured
against (perf/regression.py starts it).

  python perf/pytriton_server.py --repo model_repository_local --grpc-port 8101 --http-port 8100 --metrics-port 8102

Same tritonserver binary (the nvidia-pytriton wheel's), same model names, tensor names, max_batch_size, preferred
batch sizes and queue delay as the repository's configs; the models run in this process with the runtimes the kit's
models use (TorchScript on the CPU, frozen and optimized for oneDNN, for mobilenetv3_pt, or with --torchscript plain
as torch.jit.load gives it; ONNX Runtime for
mobilenetv3_onnx, its threads named as the kit names them (left to ONNX Runtime, one thread per core of the host,
each pinned there, so on a 16-core host under `taskset -c 0,1` this process used 15.7 cores); OpenVINO at the
config's precision for mobilenetv3_openvino and mobilenetv3_openvino_u8), so the comparison is of the serving path
alone. No endpoint is restricted (perf_analyzer reads the statistics API without a
key). Runs until SIGINT/SIGTERM.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from mnv3kit.spec import ONNX, OV, OV_U8, PT
from mnv3kit.validate import parse_config


def bind(triton, repo: Path, spec, infer_one) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    config = parse_config(repo / spec.name / "config.pbtxt")
    batching = config.dynamic_batching
    classes = int(config.output[0].dims[0])

    @batch
    def infer(**inputs):
        return {spec.output_name: infer_one(inputs[spec.input_name])}

    triton.bind(model_name=spec.name, infer_func=infer,
                inputs=[Tensor(name=spec.input_name, dtype=np.uint8 if spec.input_dtype == "TYPE_UINT8" else np.float32,
                               shape=(3, 224, 224))],
                outputs=[Tensor(name=spec.output_name, dtype=np.float32, shape=(classes,))],
                config=ModelConfig(max_batch_size=config.max_batch_size, batcher=DynamicBatcher(
                    preferred_batch_size=list(batching.preferred_batch_size),
                    max_queue_delay_microseconds=batching.max_queue_delay_microseconds)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="a --target local repository (its mobilenetv3_pt, _onnx and _openvino are served)")
    p.add_argument("--http-port", type=int, required=True, help="HTTP port")
    p.add_argument("--grpc-port", type=int, required=True, help="gRPC port")
    p.add_argument("--metrics-port", type=int, required=True, help="metrics port")
    p.add_argument("--torchscript", choices=("kit", "plain"), default="kit",
                   help="how model.pt runs: kit (the kit's runner: frozen, optimized for oneDNN; default) or plain "
                        "(torch.jit.load as it is)")
    args = p.parse_args(argv)
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from mnv3kit.server import pytriton_root, server_env

    # the library path the kit's own server gets: PyTriton's python-backend stub links libpython too
    os.environ["LD_LIBRARY_PATH"] = server_env(pytriton_root())["LD_LIBRARY_PATH"]

    version = "1"

    def torchscript(path):
        if args.torchscript == "kit":  # the same frozen, oneDNN-optimized module the kit serves
            from mnv3kit.backend.classifier_model import TorchRunner

            return TorchRunner(path)
        import torch

        module = torch.jit.load(path).eval()

        def infer(x):
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()
        return infer

    def onnxruntime(path):  # the kit's session options: its threads stay in this process's CPU set
        from mnv3kit.backend.classifier_model import OnnxRunner

        return OnnxRunner(path, ONNX.input_name)

    def openvino(path):
        from mnv3kit.backend.classifier_model import OpenVinoRunner

        params = parse_config(Path(path).parents[1] / "config.pbtxt").parameters
        return OpenVinoRunner(path, params["precision"].string_value)

    runners = [(spec, make) for spec, make in ((PT, torchscript), (ONNX, onnxruntime), (OV, openvino),
                                               (OV_U8, openvino))
               if (args.repo / spec.name).is_dir()]
    if not runners:
        p.error(f"{args.repo} holds none of {PT.name}, {ONNX.name}, {OV.name}, {OV_U8.name}")
    config = TritonConfig(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                          http_address="127.0.0.1", grpc_address="127.0.0.1")
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        for spec, make in runners:
            bind(triton, args.repo, spec, make(str(args.repo / spec.name / version / spec.artifact)))
        print("ready", flush=True)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
