"""Names and shapes every part of the kit agrees on, defined once."""

from dataclasses import dataclass

IMAGE_SIZE = 224  # network input, square
RESIZE_SIZE = 256  # shorter side before the center crop (the original project's val transform)
CHANNELS = 3
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INPUT_DIMS = (CHANNELS, IMAGE_SIZE, IMAGE_SIZE)

LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"
PLAN_INFO_FILE = "plan_info.json"  # TensorRT version + GPU compute capability, beside model.plan
PARITY_FILE = "parity.npz"  # beside a python-backend torch artifact: photos + eager FP32 logits, checked at load
COMPILED_ARTIFACT = "model.pt2"  # torch.export program, compiled by TorchInductor where it is served
# How the torch models (pt, u8) run: TorchScript (native libtorch on ngc, the python backend on local) or
# the exported program compiled by TorchInductor in the python backend (any target; KIND_GPU).
RUNTIMES = ("torchscript", "compiled")
DEFAULT_VERSION = 1

PROTOCOLS = ("http", "grpc")
DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}  # Triton's default ports

# Triton's admin APIs (restricted APIs/protocols) answer only requests carrying this header with the server's key.
# Over gRPC Triton expects the header under the prefix "triton-grpc-protocol-".
ADMIN_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
ADMIN_HEADER = "admin-key"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"  # where the kit's clients, perf tools and compose read the key from


def admin_headers(key, protocol: str) -> dict:
    """Request headers carrying the admin key for one protocol ({} without a key)."""
    if not key:
        return {}
    return {(ADMIN_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}"): key}


# What serves a model, as Triton's config names it: a native backend's `platform`, or a `backend`.
TORCHSCRIPT_PLATFORM = "pytorch_libtorch"
ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
ENSEMBLE_PLATFORM = "ensemble"
PYTHON_BACKEND = "python"
OPENVINO_BACKEND = "openvino"  # a `backend`, not a platform: Triton's OpenVINO backend
DALI_BACKEND = "dali"


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its Triton name, native platform, tensor names and artifact file."""

    key: str
    name: str
    platform: str
    input_name: str
    output_name: str
    artifact: str
    input_dtype: str = "TYPE_FP32"  # normalized CHW floats; UINT8: raw CHW pixels, normalized inside the model


PT = ModelSpec("pt", "mobilenetv3_pt", TORCHSCRIPT_PLATFORM, "INPUT__0", "OUTPUT__0", "model.pt")
ONNX = ModelSpec("onnx", "mobilenetv3_onnx", ONNX_PLATFORM, "image", "outputs", "model.onnx")
TRT = ModelSpec("trt", "mobilenetv3_trt", TENSORRT_PLATFORM, "image", "outputs", "model.plan")
# The smaller input contract (4x fewer bytes per image): the TorchScript model behind a UINT8 input, normalized on
# the serving device. Local target only, on request (--models pt,onnx,u8).
U8 = ModelSpec("u8", "mobilenetv3_u8", TORCHSCRIPT_PLATFORM, "PIXELS", "OUTPUT__0", "model.pt", "TYPE_UINT8")
# OpenVINO's IR of model.onnx (model.xml, weights in model.bin beside it): Triton's OpenVINO backend on the ngc
# target, OpenVINO's runtime in the python backend on local. On request (--models ...,ov): the openvino extra.
OV = ModelSpec("ov", "mobilenetv3_openvino", OPENVINO_BACKEND, "image", "outputs", "model.xml")
# The same IR behind the UINT8 contract: OpenVINO's PrePostProcessor puts the u8 -> FP32 conversion and the
# normalization into the graph, so Triton's OpenVINO backend serves it as it is too. On request (--models ...,ov_u8).
OV_U8 = ModelSpec("ov_u8", "mobilenetv3_openvino_u8", OPENVINO_BACKEND, "PIXELS", "outputs", "model.xml", "TYPE_UINT8")
OV_WEIGHTS = "model.bin"
OPENVINO_MODELS = (OV, OV_U8)
MODELS = (PT, ONNX, TRT)
OPTIONAL = (U8, OV, OV_U8)
MODELS_BY_NAME = {m.name: m for m in (*MODELS, *OPTIONAL)}

# Triton's words for a request refused under load (a full queue, a request past its timeout); the kit's
# python-backend queue (backend/serving.py, copied into repositories without the kit) answers with the same words.
OVERLOADED = ("Exceeds maximum queue size", "Request timeout expired")

# What the embedded (python-backend) Triton can run: no TensorRT there.
LOCAL_MODELS = (PT, ONNX)
LOCAL_OPTIONAL = (U8, OV, OV_U8)

# The image ensemble: a client sends the encoded file (JPEG, PNG, ...), the server decodes and preprocesses it
# (mobilenetv3_preprocess) and feeds one of the classifiers above. One image per batch item as UINT8 [-1] with
# ragged batching: the input type NVIDIA's DALI backend takes (it does not read BYTES/TYPE_STRING tensors), so both
# targets offer the same contract, and the raw file bytes are the request body (no length prefixes).
ENSEMBLE = "mobilenetv3_image"
PREPROCESS = "mobilenetv3_preprocess"
IMAGE_INPUT = "IMAGE"  # ensemble and preprocessing input: the file's bytes
PREPROCESSED = "PREPROCESSED"  # preprocessing output: the classifier's input (FP32 normalized, or UINT8 pixels)
ENSEMBLE_OUTPUT = "LOGITS"
WARMUP_DIR = "warmup"  # <model>/warmup/: where Triton reads model_warmup's input_data_file
ENSEMBLE_CLASSIFIERS = {"local": (PT, ONNX, U8, OV, OV_U8), "ngc": (PT, ONNX, TRT, OV)}  # DALI hands over FP32
