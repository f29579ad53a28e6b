"""Build (or check) a Triton model repository from MobileNetV3 weights.

  python build_repo.py --arch large --weights weights/MobileNetV3_Large.pth --labels weights/class_indices.json
  python build_repo.py --check model_repository

A build traces TorchScript, exports ONNX (dynamic batch, onnxsim), checks numerical parity between them on real
photographs, builds the TensorRT plan where TensorRT exists, renders every config.pbtxt from templates/, validates
the result with Triton's own config schema and only then replaces the output directory (a failed build keeps the
previous repository). Exit codes: 0 ok, 1 --check found problems, 2 bad input or failed build.
"""

import argparse
import sys
from pathlib import Path

from mnv3kit.cli import add_output, model_keys
from mnv3kit.errors import cli_errors, prog_name


def parse_args(argv=None) -> argparse.Namespace:
    from mnv3kit.backend.serving import YIELD_MODES
    from mnv3kit.build import TRT_MODES
    from mnv3kit.ensemble import IMAGE_MODEL_KINDS
    from mnv3kit.model import ARCHS
    from mnv3kit.render import GPU_DECODE, GPU_PARITY_TOLERANCE, ONNX_ACCELERATORS, TARGETS, GpuOptions
    from mnv3kit.spec import RUNTIMES
    from mnv3kit.validate import FORMATS

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", metavar="DIR", type=Path,
                   help="only validate an existing repository (configs, artifacts, labels, manifest hashes)")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="how the validation's findings are printed: text (default), json (one list of records: file, "
                        "line, message, severity) or github (GitHub Actions annotations on the files and lines)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=ARCHS, default="large", help="MobileNetV3 variant (default: large)")
    g.add_argument("--weights", type=Path, help="state dict (.pth) in torchvision's layout; plain, nested under "
                   "'state_dict'/'model', or 'module.'-prefixed. Omitted: seeded random init (meaningless predictions)")
    g.add_argument("--labels", type=Path, help="class_indices.json ({\"0\": \"daisy\", ...}) or labels.txt "
                   "(one per line); default class_0..class_N-1")
    g = p.add_argument_group("repository")
    add_output(g, Path("model_repository"), help="the repository to write")
    g.add_argument("--target", choices=TARGETS, default="ngc",
                   help="ngc: NVIDIA's Triton image, native backends (default); local: the embedded Triton "
                        "(python-backend models with the same names and tensors)")
    g.add_argument("-m", "--models", type=model_keys, default=None, metavar="LIST",
                   help="comma-separated subset of pt,onnx,trt, by key or Triton model name (default: all the "
                        "target offers; local: pt,onnx). "
                        "E.g. --target local --models onnx for a server without torch. Local also offers u8: "
                        "mobilenetv3_u8, the TorchScript model behind a UINT8 pixel input normalized on the device. "
                        "Both targets offer ov: mobilenetv3_openvino, OpenVINO's IR of model.onnx on CPU instances "
                        "(the openvino extra), and ov_u8: mobilenetv3_openvino_u8, the same IR behind a UINT8 pixel "
                        "input, the normalization inside its graph")
    g.add_argument("--ensemble", metavar="CLASSIFIER", help="also build mobilenetv3_image, the ensemble that takes "
                   "encoded image bytes (JPEG, PNG, ...), preprocesses them on the server (mobilenetv3_preprocess) "
                   "and feeds this classifier: pt, onnx, u8, ov or ov_u8 on --target local, pt, onnx, trt or ov on ngc")
    g.add_argument("--image-model", choices=IMAGE_MODEL_KINDS, default="ensemble",
                   help="how --ensemble serves mobilenetv3_image: ensemble (default: mobilenetv3_preprocess, then the "
                        "classifier, two models Triton chains) or fused (local target: one python model that decodes "
                        "and classifies in one process with the classifier's artifact; on a GPU no tensor is handed "
                        "between processes, the fastest image path)")
    g.add_argument("--max-batch-size", type=int, default=8, help="config max_batch_size (default 8)")
    g.add_argument("--instance-kind", choices=("auto", "KIND_GPU", "KIND_CPU"), default="auto",
                   help="auto: KIND_GPU for ngc, KIND_CPU for local")
    g.add_argument("--instance-count", type=int, default=1, help="model instances per device (default 1)")
    g.add_argument("--gpus", type=lambda s: tuple(int(x) for x in s.split(",")), default=(),
                   help="comma-separated GPU ids for KIND_GPU instances (default: all)")
    g.add_argument("--no-dynamic-batching", action="store_true", help="leave dynamic_batching out of the configs")
    g.add_argument("--preferred-batch-sizes", type=lambda s: tuple(int(x) for x in s.split(",") if x),
                   default=None, help="dynamic batching preferred sizes, e.g. 4,8 (default: opt and max batch)")
    g.add_argument("--queue-delay-us", type=int, default=100, help="max_queue_delay_microseconds (default 100)")
    g.add_argument("--max-queue-size", type=int, default=None,
                   help="requests the dynamic batcher queues before it refuses more with UNAVAILABLE (default: "
                        "4 x max batch size x instance count, 4 full batches of single images per instance; "
                        "0: unbounded)")
    g.add_argument("--queue-timeout-ms", type=float, default=5000.0,
                   help="a request still queued after this long is refused (default 5000; 0: no timeout)")
    g.add_argument("--yield-core", choices=YIELD_MODES, default="auto",
                   help="local target, CPU instances: while refusing overload, compute on one core fewer so that "
                        "taking requests in keeps a core (always), on every core (never), or on one fewer only while "
                        "other work than the server's (a load generator) keeps its CPU set busy (auto, the default)")
    g.add_argument("--version-policy", default="latest:1", help="latest[:N], all, or specific:1,2 (default latest:1)")
    g.add_argument("--model-version", type=int, default=1, help="version directory to write (default 1)")
    g = p.add_argument_group("GPU serving (KIND_GPU instances)")
    g.add_argument("--runtime", choices=RUNTIMES, default="torchscript",
                   help="how the torch models (pt, u8) run. torchscript (default): model.pt, native libtorch on ngc, "
                        "the python backend on local. compiled: model.pt2 (torch.export), compiled by TorchInductor "
                        "on the serving GPU and replayed as CUDA graphs, in the python backend on either target "
                        "(ngc: NVIDIA's <yy.mm>-pyt-python-py3 image); KIND_GPU only")
    g.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="compute precision of python-backend torch models, and of ONNX Runtime's TensorRT provider "
                        "(default fp32)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format inside the torch model")
    g.add_argument("--cuda-graph-batches", type=lambda s: tuple(int(x) for x in s.split(",") if x), default=(),
                   help="capture a CUDA graph per batch size, e.g. 1,2,4,8,16,32,64; a batch runs padded to the "
                        "next size. Python-backend torch models, and the TensorRT model's graph_spec on ngc "
                        "(default: none)")
    g.add_argument("--compile-cache", default=GpuOptions.compile_cache,
                   help="--runtime compiled: directory of TorchInductor's and Triton's kernel caches on the serving "
                        f"host; a restart reuses them (default {GpuOptions.compile_cache})")
    g.add_argument("--gpu-parity-tolerance", type=float, default=GPU_PARITY_TOLERANCE,
                   help="load-time parity check of GPU torch models against the build's eager FP32 logits, times "
                        f"max(1, max |logit|) (default {GPU_PARITY_TOLERANCE}: FP16 and TF32, see docs/gpu.md)")
    g.add_argument("--onnx-accelerator", choices=ONNX_ACCELERATORS, default="none",
                   help="ngc: run the ONNX model through ONNX Runtime's TensorRT execution provider (default none: "
                        "its CUDA provider)")
    g.add_argument("--gpu-decode", choices=GPU_DECODE, default="gated",
                   help="local target, --ensemble on KIND_GPU: decode JPEGs on the GPU (nvImageCodec with "
                        "libjpeg-turbo's chroma upsampling, else torchvision's nvJPEG). gated (default): only if its "
                        "top-1 classes agree with Pillow's on >= 99.5 %% of 512 photo views, checked at build time "
                        "on this machine's GPU (no GPU here: Pillow on the CPU); on: without the check; off: Pillow")
    g = p.add_argument_group("OpenVINO (--models ...,ov or ov_u8)")
    g.add_argument("--openvino-precision", choices=("fp32", "bf16"), default="fp32",
                   help="compute precision of the OpenVINO model. fp32 (default): exact, in the parity gate like "
                        "ONNX. bf16: a CPU's AVX512_BF16/AMX units, about twice as fast, built only when its top-1 "
                        "agrees with FP32 eager on at least --openvino-min-agreement of 512 photo views (the "
                        "accuracy gate, on --parity-images or scikit-learn's photographs)")
    g.add_argument("--openvino-min-agreement", type=float, default=0.995, metavar="F",
                   help="the accuracy gate's share of images whose top-1 class BF16 must keep (default 0.995); "
                        "on the ngc target it also gates fp32, since Triton's OpenVINO backend computes in BF16 on "
                        "any CPU that has it")
    g = p.add_argument_group("TensorRT")
    g.add_argument("--trt", choices=TRT_MODES, default="auto",
                   help="auto: build the plan if the TensorRT Python package or trtexec exists, else skip with "
                        "instructions; skip; require: fail without TensorRT")
    g.add_argument("--opt-batch", type=int, default=4, help="optimization profile opt batch (default 4)")
    g.add_argument("--max-batch", type=int, default=None, help="profile max batch (default: --max-batch-size)")
    g.add_argument("--fp16", action="store_true", help="allow FP16 kernels in the plan")
    g.add_argument("--workspace-mb", type=int, default=1600, help="builder workspace pool in MiB (default 1600)")
    p.add_argument("--parity-images", type=Path, help="folder of images for the parity gate "
                   "(default: scikit-learn's sample photographs)")
    p.add_argument("--parity-tolerance", type=float, default=1e-4,
                   help="allowed max |logit difference| between eager, TorchScript and ONNX, times "
                   "max(1, max |logit|) (default 1e-4)")
    p.add_argument("--allow-constant-logits", action="store_true",
                   help="build even when the model gives the same logits for every parity image (refused by default: "
                        "such a model answers every request the same)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        from mnv3kit.build import BuildOptions, build
        from mnv3kit.errors import KitError
        from mnv3kit.render import Batching, ConfigOptions, GpuOptions, Instances, PlanOptions, VersionPolicy
        from mnv3kit.repository import restore_interrupted
        from mnv3kit.validate import check_repository, print_report

        if args.check is None:
            for flag, value in (("--max-batch-size", args.max_batch_size), ("--instance-count", args.instance_count)):
                if value < 1:
                    raise KitError(f"{flag} must be >= 1, got {value}")
            kind = args.instance_kind if args.instance_kind != "auto" else (
                "KIND_CPU" if args.target == "local" else "KIND_GPU")
            max_batch = args.max_batch or args.max_batch_size
            preferred = args.preferred_batch_sizes
            if preferred is None:
                preferred = tuple(sorted({min(args.opt_batch, args.max_batch_size), args.max_batch_size}))
            config = ConfigOptions(
                target=args.target, max_batch_size=args.max_batch_size, version=args.model_version,
                version_policy=VersionPolicy.parse(args.version_policy),
                instances=Instances(kind, args.instance_count, args.gpus),
                batching=Batching(not args.no_dynamic_batching, preferred, args.queue_delay_us,
                                  args.max_queue_size, round(args.queue_timeout_ms * 1000), args.yield_core),
                gpu=GpuOptions(args.precision, args.channels_last, args.cuda_graph_batches, args.compile_cache,
                               args.gpu_parity_tolerance, args.onnx_accelerator, args.gpu_decode),
                runtime=args.runtime, cpu_parity_tolerance=args.parity_tolerance,
                openvino_precision=args.openvino_precision)
            opts = BuildOptions(arch=args.arch, weights=args.weights, labels=args.labels, output=args.output,
                                config=config, trt=args.trt, parity_images=args.parity_images,
                                parity_tolerance=args.parity_tolerance, models=args.models, ensemble=args.ensemble,
                                image_model=args.image_model,
                                allow_constant_logits=args.allow_constant_logits,
                                openvino_min_agreement=args.openvino_min_agreement,
                                plan=PlanOptions(args.opt_batch, max_batch, args.fp16, args.workspace_mb))
            try:
                build(opts)
            except (OSError, RuntimeError) as exc:  # disk full, permissions, an exporter failure: still one line
                raise KitError(f"build failed ({type(exc).__name__}: {exc}); the previous repository is kept") from None
            repo = args.output
        else:
            repo = args.check
            for line in restore_interrupted(repo):
                print(f"note: {line}", file=sys.stderr)
        return print_report(check_repository(repo), repo, args.format, prog_name())


if __name__ == "__main__":
    sys.exit(main())
