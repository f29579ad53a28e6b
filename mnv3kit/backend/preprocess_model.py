"""Triton python-backend model `mobilenetv3_preprocess`: encoded image bytes -> the classifier's input.

Copied into <model>/<version>/model.py next to a copy of the kit's preprocessing (<version>/mnv3kit_preprocess/:
preprocess.py and the modules it imports), which it imports from there: the stub process need not have the kit
installed, and the server runs the very code that training, the parity gate and the client run.
Input: UINT8 [-1] per batch item (the file's bytes; a request may carry several equally long rows). Output:
normalized FP32 [3,224,224], or UINT8 pixels when the config's output is TYPE_UINT8 (a classifier that normalizes).
CPU instances decode with Pillow in a thread pool across the images of a batch (Pillow releases the GIL).
GPU instances decode JPEGs with nvJPEG (torchvision.io.decode_jpeg on the device) and resize (bilinear,
antialiased), crop and normalize there; anything else (PNG, CMYK, EXIF-rotated, truncated, a failed GPU decode)
takes the CPU path for that image. One image that cannot be read fails its own request only.
"""

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by the kit's benchmarks
    pb_utils = None

try:  # in a model repository: the copies beside this file (the stub puts the version directory on sys.path)
    from mnv3kit_preprocess.preprocess import MAX_PIXELS, ImageError, decode_image, eval_pixels, normalize
    from mnv3kit_preprocess.spec import IMAGE_SIZE, MEAN, RESIZE_SIZE, STD, WARMUP_DIR
    from mnv3kit_serving import RequestQueue
except ModuleNotFoundError:  # imported by the kit itself (in-process benchmarks)
    from mnv3kit.backend.serving import RequestQueue
    from mnv3kit.preprocess import MAX_PIXELS, ImageError, decode_image, eval_pixels, normalize
    from mnv3kit.spec import IMAGE_SIZE, MEAN, RESIZE_SIZE, STD, WARMUP_DIR

JPEG_EOI = b"\xff\xd9"


def cpu_preprocess(data: bytes, pixels: bool) -> np.ndarray:
    """The kit's eval transform of one encoded image: uint8 CHW pixels, or normalized float32 CHW."""
    chw = eval_pixels(decode_image(data))
    return chw if pixels else normalize(chw)


def gpu_decodable(data: bytes) -> bool:
    """A JPEG nvJPEG decodes to what Pillow would: RGB or gray, no EXIF rotation, complete, not a bomb."""
    from PIL import Image

    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\x00").endswith(JPEG_EOI):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only
            return (img.mode in ("RGB", "L") and img.width * img.height <= MAX_PIXELS
                    and img.getexif().get(0x0112, 1) == 1)
    except Exception:  # noqa: BLE001 - the CPU path reports what is wrong with it
        return False


class GpuDecoder:
    """nvJPEG decode + resize / center crop on one GPU (torchvision), normalization there too."""

    def __init__(self, device: str):
        import torch
        import torchvision
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        self.torch, self.device, self.F = torch, torch.device(device), F
        self.decode = lambda tensors: decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
        self.mean = torch.tensor(MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(3, 1, 1)
        self.version = torchvision.__version__

    def resize_crop(self, img):
        """Resize(256) shorter side + CenterCrop(224) of one uint8 CHW image, sizes as preprocess.py computes them."""
        h, w = img.shape[-2:]
        size = (int(RESIZE_SIZE * h / w), RESIZE_SIZE) if w <= h else (RESIZE_SIZE, int(RESIZE_SIZE * w / h))
        img = self.F.resize(img, [max(size[0], 1), max(size[1], 1)], antialias=True)
        top = int(round((img.shape[-2] - IMAGE_SIZE) / 2.0))
        left = int(round((img.shape[-1] - IMAGE_SIZE) / 2.0))
        return img[:, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]

    def __call__(self, datas):
        """uint8 CHW crops on the GPU for the images nvJPEG decoded; None where the CPU path must take over."""
        torch = self.torch
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            decoded = self.decode(tensors)
        except RuntimeError:  # one bad image fails the batched call: retry one by one
            decoded = []
            for t in tensors:
                try:
                    decoded.append(self.decode([t])[0])
                except RuntimeError:
                    decoded.append(None)
        return [None if img is None else self.resize_crop(img) for img in decoded]

    def normalize(self, batch):
        return (batch.float() / 255.0 - self.mean) / self.std  # as preprocess.normalize


class Preprocessor:
    """Encoded images -> the classifier's input, per image, on the CPU (Pillow threads) or a GPU (nvJPEG first).
    ``pixels``: uint8 CHW for a classifier that normalizes itself, else normalized float32 CHW."""

    def __init__(self, pixels: bool, threads: int = 0, device: str = "cpu", log=print, warn=print):
        self.pixels = pixels
        self.threads = threads or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode")
        self.gpu = None
        if device != "cpu":
            try:
                self.gpu = GpuDecoder(device)
                log(f"JPEG decode on {device} (nvJPEG, torchvision {self.gpu.version}); other formats on "
                    f"{self.threads} CPU threads")
            except ImportError as exc:
                warn(f"no GPU decode ({exc}); decoding with Pillow on {self.threads} CPU threads")

    def _cpu(self, datas, pixels):
        """Pillow in the thread pool: an array per image, or the ImageError that image raised."""
        def one(data):
            try:
                return cpu_preprocess(data, pixels)
            except ImageError as exc:
                return exc
        return list(self.pool.map(one, datas))

    def __call__(self, datas):
        """Per image: its preprocessed array (GPU: a uint8 CHW tensor on the device), or its ImageError."""
        if self.gpu is None:
            return self._cpu(datas, self.pixels)
        on_gpu = [i for i, d in enumerate(datas) if gpu_decodable(d)]
        results = [None] * len(datas)
        for i, crop in zip(on_gpu, self.gpu([datas[i] for i in on_gpu]) if on_gpu else []):
            results[i] = crop
        rest = [i for i, r in enumerate(results) if r is None]
        # CPU-decoded images go up as pixels: normalization happens once, on the GPU, for the whole batch
        for i, r in zip(rest, self._cpu([datas[i] for i in rest], True)):
            results[i] = r if isinstance(r, Exception) else self.gpu.torch.from_numpy(r).to(self.gpu.device)
        return results

    def stack(self, items):
        """Good items of one request -> its output batch (a numpy array, or a tensor on the GPU, computed: the
        stream that made it is synchronized, so whoever reads it next sees the finished values)."""
        if self.gpu is None:
            return np.stack(items)
        batch = self.gpu.torch.stack(items)
        batch = batch if self.pixels else self.gpu.normalize(batch)
        self.gpu.torch.cuda.current_stream(self.gpu.device).synchronize()
        return batch

    def bind_thread(self) -> None:
        """Make the decode GPU the current device of the calling thread (CUDA's current device is per thread)."""
        if self.gpu is not None:
            self.gpu.torch.cuda.set_device(self.gpu.device)

    def close(self):
        self.pool.shutdown(wait=False)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        on_gpu = args["model_instance_kind"] == "GPU"
        name = args["model_instance_name"]
        self.preprocess = Preprocessor(
            config["output"][0]["data_type"] == "TYPE_UINT8", int(params.get("decode_threads", "0") or 0),
            f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu",
            lambda message: pb_utils.Logger.log_info(f"{name}: {message}"),
            lambda message: pb_utils.Logger.log_warn(f"{name}: {message}"))
        self._check_warmup(config, Path(args["model_repository"]))
        self.queue = RequestQueue(name, self._respond, self._take, int(config.get("max_batch_size", 0)) or 1,
                                  int(params.get("max_queue_size", "0") or 0),
                                  int(params.get("queue_timeout_us", "0") or 0), self.preprocess.bind_thread,
                                  pb_utils.Logger.log_warn)

    def _check_warmup(self, config, model_dir: Path) -> None:
        """Decode every model_warmup file here, before Triton runs the samples: an unreadable one fails the load
        with its name. Triton 2.51 left to find it aborted now and then (boost::interprocess::lock_exception in the
        server process while it tore the failed instance down: 2 of 5 starts here)."""
        for sample in config.get("model_warmup", []):
            for tensor in sample.get("inputs", {}).values():
                if tensor.get("input_data_file"):
                    path = model_dir / WARMUP_DIR / tensor["input_data_file"]
                    try:
                        cpu_preprocess(path.read_bytes(), self.preprocess.pixels)
                    except (OSError, ImageError) as exc:
                        raise pb_utils.TritonModelException(
                            f"warmup sample {sample.get('name')!r} ({WARMUP_DIR}/{path.name}): {exc}") from None

    def _take(self, request):
        """The bytes of each image of the request: one per batch row (trailing zeros allowed), copied."""
        rows = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
        datas = [row.tobytes() for row in rows.reshape(rows.shape[0], -1)]
        return datas, len(datas)

    def execute(self, requests):
        self.queue.submit(requests)  # answered by the queue's worker thread through each request's response sender

    def _respond(self, per_request):
        results = self.preprocess([d for datas in per_request for d in datas])
        responses, start = [], 0
        for datas in per_request:
            mine = results[start:start + len(datas)]
            start += len(datas)
            errors = [str(r) for r in mine if isinstance(r, Exception)]
            if errors or not mine:
                message = "; ".join(errors) or "the request has no image"
                error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)  # the client's input: 400
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            batch = self.preprocess.stack(mine)
            # a GPU batch stays on the GPU (the classifier takes it from there); handed over as the tensor itself,
            # not a DLPack capsule, so the backend also synchronizes with the stream that computed it
            tensor = (pb_utils.Tensor(self.output_name, batch) if isinstance(batch, np.ndarray)
                      else pb_utils.Tensor.from_dlpack(self.output_name, batch))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.queue.close()
        self.preprocess.close()
