"""Triton python-backend model `mobilenetv3_preprocess`: encoded image bytes -> the classifier's input.

Copied into <model>/<version>/model.py next to a copy of the kit's preprocessing (<version>/mnv3kit_preprocess/:
preprocess.py and the modules it imports), which it imports from there: the stub process need not have the kit
installed, and the server runs the very code that training, the parity gate and the client run.
Input: UINT8 [-1] per batch item (the file's bytes; a request may carry several equally long rows). Output:
normalized FP32 [3,224,224], or UINT8 pixels when the config's output is TYPE_UINT8 (a classifier that normalizes).
CPU instances decode with Pillow in a thread pool across the images of a batch (Pillow releases the GIL).
GPU instances decode the JPEGs of a batch there (nvImageCodec, or torchvision's nvJPEG) and resize, crop and
normalize them there as one batch (TensorDecoder), unless the config's gpu_decode is "off"; anything else (PNG,
CMYK, EXIF-rotated, truncated, a failed GPU decode) takes the CPU path for that image. One image that cannot be
read fails its own request only.
"""

import io
import os
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by the kit's benchmarks
    pb_utils = None

try:  # in a model repository: the copies beside this file (the stub puts the version directory on sys.path)
    from mnv3kit_preprocess.preprocess import (MAX_PIXELS, ImageError, crop_offsets, decode_image, eval_pixels,
                                               normalize, shorter_side_size)
    from mnv3kit_preprocess.spec import IMAGE_SIZE, MEAN, STD, WARMUP_DIR
    from mnv3kit_serving import RequestQueue, read_config
except ModuleNotFoundError:  # imported by the kit itself (in-process benchmarks)
    from mnv3kit.backend.serving import RequestQueue, read_config
    from mnv3kit.preprocess import (MAX_PIXELS, ImageError, crop_offsets, decode_image, eval_pixels, normalize,
                                    shorter_side_size)
    from mnv3kit.spec import IMAGE_SIZE, MEAN, STD, WARMUP_DIR

JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
EXIF = b"Exif\x00\x00"  # an APP1 EXIF segment, which may rotate the image: Pillow reads its orientation


def cpu_preprocess(data: bytes, pixels: bool) -> np.ndarray:
    """The kit's eval transform of one encoded image: uint8 CHW pixels, or normalized float32 CHW."""
    chw = eval_pixels(decode_image(data))
    return chw if pixels else normalize(chw)


def jpeg_complete(data: bytes) -> bool:
    """Starts with SOI and ends with EOI (trailing zeros allowed: a zero-padded batch row)."""
    return data.startswith(JPEG_SOI) and data.rstrip(b"\x00").endswith(JPEG_EOI)


def has_exif(data: bytes) -> bool:
    """Whether a JPEG's APP segments (right after SOI, before any other marker) include an EXIF one."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF and (0xE0 <= data[i + 1] <= 0xEF or data[i + 1] == 0xFE):
        if data[i + 1] == 0xE1 and data[i + 4:i + 10] == EXIF:
            return True
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def gpu_decodable(data: bytes) -> bool:
    """A JPEG nvJPEG decodes to what Pillow would: RGB or gray, no EXIF rotation, complete, not a bomb."""
    from PIL import Image

    if not jpeg_complete(data):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only
            return (img.mode in ("RGB", "L") and img.width * img.height <= MAX_PIXELS
                    and img.getexif().get(0x0112, 1) == 1)
    except Exception:  # noqa: BLE001 - the CPU path reports what is wrong with it
        return False


PRECISION_BITS = 22  # Pillow's fixed-point resampling coefficients (32 - 8 - 2 bits)
WEIGHT_CACHE = 256  # image sizes whose resampling matrices stay on the device (about 1 MB each at 500 x 375)
PAD_LIMIT = 64 << 20  # elements of one padded float batch in the resize (256 MiB): larger batches go in parts
FANCY_UPSAMPLING = ":fancy_upsampling=1"  # nvImageCodec's option: libjpeg-turbo's chroma upsampling, as Pillow
NVIMGCODEC_CPU_ONLY = -99999  # nvImageCodec's NVIMGCODEC_DEVICE_CPU_ONLY device id


def resample_weights(in_size: int, out_size: int, start: int, count: int) -> np.ndarray:
    """Outputs start..start+count of Pillow's bilinear (antialiased) resampling of ``in_size`` samples to
    ``out_size``, as a [count, in_size] matrix of Pillow's own coefficients (rounded to its fixed point)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)  # the bilinear filter's support is 1 sample, widened when shrinking
    weights = np.zeros((count, in_size), np.float64)
    for row, out in enumerate(range(start, start + count)):
        center = (out + 0.5) * scale
        lo, hi = max(int(center - filterscale + 0.5), 0), min(int(center + filterscale + 0.5), in_size)
        k = np.clip(1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / filterscale), 0.0, None)
        k = k / k.sum() if k.sum() else k
        weights[row, lo:hi] = np.floor(k * (1 << PRECISION_BITS) + 0.5) / (1 << PRECISION_BITS)
    return weights.astype(np.float32)


def nvimgcodec_decoder(device, options: str):
    """An nvImageCodec decoder for a torch device: every backend on a GPU, libjpeg-turbo alone on the CPU."""
    from nvidia import nvimgcodec

    if device.type == "cuda":
        return nvimgcodec.Decoder(device_id=device.index or 0, options=options)
    return nvimgcodec.Decoder(device_id=NVIMGCODEC_CPU_ONLY, backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)],
                              options=options)


class TensorDecoder:
    """JPEG decode, Resize(256) + CenterCrop(224) as Pillow computes them, and normalization, for a whole batch at
    once in torch on ``device`` (a GPU; the CPU runs the same code in the kit's tests).

    Decode: nvImageCodec (pip nvidia-nvimgcodec-cu12/-cu13) with libjpeg-turbo's chroma upsampling, batched; without
    it, torchvision's nvJPEG decode (batched, but its 4:2:0 chroma differs from Pillow's by up to ~18 levels).
    Resize: Pillow's two passes (horizontal, then vertical, each rounded to uint8) as two batched matrix products
    with the crop's rows of Pillow's coefficients; images of different sizes are zero-padded to one batch."""

    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.weights = OrderedDict()  # (h, w) -> (rows [224, h], columns^T [w, 224]) on the device, newest last
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        try:
            from nvidia import nvimgcodec

            self.host = self.device.type != "cuda"
            self.decoder = nvimgcodec_decoder(self.device, FANCY_UPSAMPLING)
            self.decode = self._nvimgcodec
            self.name = f"nvImageCodec {nvimgcodec.__version__}, fancy upsampling"
        except ImportError:
            import torchvision
            from torchvision.io import ImageReadMode, decode_jpeg

            self.decode_jpeg = lambda tensors: decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
            self.decode = self._torchvision
            self.name = f"torchvision {torchvision.__version__} nvJPEG"

    def decodable(self, datas):
        """gpu_decodable of each image; with nvImageCodec its own header parser answers for JPEGs without EXIF (a
        fraction of Pillow's time per image)."""
        if self.decode != self._nvimgcodec:
            return [gpu_decodable(d) for d in datas]
        from nvidia import nvimgcodec

        out = []
        for data in datas:
            if not jpeg_complete(data):
                out.append(False)
            elif has_exif(data):
                out.append(gpu_decodable(data))
            else:
                try:
                    stream = nvimgcodec.CodeStream(data)
                    out.append(stream.codec_name == "jpeg" and stream.num_channels in (1, 3)
                               and stream.width * stream.height <= MAX_PIXELS)
                except Exception:  # noqa: BLE001 - the CPU path reports what is wrong with it
                    out.append(False)
        return out

    def _nvimgcodec(self, datas):
        """uint8 CHW tensors on the device, None where the image did not decode."""
        torch = self.torch
        images = self.decoder.decode(datas)
        return [None if img is None else
                (torch.from_numpy(np.asarray(img.cpu())) if self.host else torch.from_dlpack(img)).permute(2, 0, 1)
                for img in images]

    def _torchvision(self, datas):
        torch = self.torch
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(self.decode_jpeg(tensors))
        except RuntimeError:  # one bad image fails the batched call: retry one by one
            decoded = []
            for t in tensors:
                try:
                    decoded.append(self.decode_jpeg([t])[0])
                except RuntimeError:
                    decoded.append(None)
            return decoded

    def _weights(self, h: int, w: int):
        if (h, w) in self.weights:
            self.weights.move_to_end((h, w))
        else:
            nw, nh = shorter_side_size(w, h)
            left, top = crop_offsets(nw, nh)
            rows = resample_weights(h, nh, top, IMAGE_SIZE)
            cols = resample_weights(w, nw, left, IMAGE_SIZE).T.copy()
            self.weights[(h, w)] = (self.torch.from_numpy(rows).to(self.device),
                                    self.torch.from_numpy(cols).to(self.device))
            if len(self.weights) > WEIGHT_CACHE:
                self.weights.popitem(last=False)
        return self.weights[(h, w)]

    def _padded(self, tensors):
        """One zero-padded batch of tensors of different shapes (a single copy): zeros add nothing to a product."""
        torch = self.torch
        if len({tuple(t.shape) for t in tensors}) == 1:
            return torch.stack(tensors)
        with warnings.catch_warnings():  # "nested tensors are a prototype": used for its one-copy padding only
            warnings.simplefilter("ignore", UserWarning)
            return torch.nested.nested_tensor(list(tensors)).to_padded_tensor(0)

    def resize_crop(self, images):
        """uint8 CHW images of any sizes -> uint8 [N, 3, 224, 224], the kit's eval crop of each."""
        out, part, h, w = [], [], 0, 0
        for img in images:
            ih, iw = img.shape[-2:]
            if part and (len(part) + 1) * 3 * max(h, ih) * max(w, iw) > PAD_LIMIT:  # the padded batch's elements
                out.append(self._resize_part(part))
                part, h, w = [], 0, 0
            part.append(img)
            h, w = max(h, ih), max(w, iw)
        if part:
            out.append(self._resize_part(part))
        return self.torch.cat(out) if len(out) > 1 else out[0]

    def _resize_part(self, images):
        torch = self.torch
        shapes = {tuple(img.shape[-2:]) for img in images}
        if len(shapes) == 1:  # one pair of matrices, broadcast over the batch
            rows, cols = self._weights(*shapes.pop())  # [224, H], [W, 224]
        else:
            weights = [self._weights(*img.shape[-2:]) for img in images]
            rows = self._padded([r for r, _ in weights])[:, None]  # [N, 1, 224, H]
            cols = self._padded([c for _, c in weights])[:, None]  # [N, 1, W, 224]
        batch = self._padded(images).float()  # [N, 3, H, W]
        tf32 = torch.backends.cuda.matmul.allow_tf32  # TF32 products would move pixels by more than a level
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            tmp = torch.floor(torch.matmul(batch, cols) + 0.5).clamp_(0, 255)  # horizontal: [N, 3, H, 224]
            return torch.floor(torch.matmul(rows, tmp) + 0.5).clamp_(0, 255).to(torch.uint8)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def __call__(self, datas):
        """Per image: its uint8 CHW crop on the device (a view into the batch's), or None where it did not decode."""
        decoded = self.decode(datas)
        good = [i for i, img in enumerate(decoded) if img is not None]
        results = [None] * len(datas)
        if good:
            crops = self.resize_crop([decoded[i] for i in good])
            for k, i in enumerate(good):
                results[i] = crops[k]
        return results

    def normalize(self, batch):
        return (batch.float() / 255.0 - self.mean) / self.std  # as preprocess.normalize


def decode_device(params: dict, device: str) -> Optional[str]:
    """Where an instance on ``device`` decodes its JPEGs: that GPU, unless the config's gpu_decode says "off" (the
    build's accuracy gate refused the GPU decode, or it was not run); None: Pillow on the CPU."""
    return device if device != "cpu" and params.get("gpu_decode", "on") == "on" else None


class Preprocessor:
    """Encoded images -> the classifier's input, per image: the JPEGs TensorDecoder takes on ``device``, the rest
    (and everything when ``device`` is None) with Pillow in a thread pool. ``pixels``: uint8 CHW for a classifier
    that normalizes itself, else normalized float32 CHW."""

    def __init__(self, pixels: bool, threads: int = 0, device: Optional[str] = None, log=print, warn=print):
        self.pixels = pixels
        self.threads = threads or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode")
        self.gpu = None
        if device is not None:
            try:
                self.gpu = TensorDecoder(device)
                log(f"JPEG decode on {device} ({self.gpu.name}); other formats on {self.threads} CPU threads")
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
        on_gpu = [i for i, ok in enumerate(self.gpu.decodable(datas)) if ok]
        results = [None] * len(datas)
        for i, crop in zip(on_gpu, self.gpu([datas[i] for i in on_gpu]) if on_gpu else []):
            results[i] = crop  # None: it did not decode there; Pillow says what is wrong with it, or reads it
        rest = [i for i, r in enumerate(results) if r is None]
        # CPU-decoded images go up as pixels: normalization happens once, on the GPU, for the whole batch
        for i, r in zip(rest, self._cpu([datas[i] for i in rest], True)):
            results[i] = r if isinstance(r, Exception) else self.gpu.torch.from_numpy(r).to(self.gpu.device)
        return results

    def batch(self, items):
        """Good items -> one batch (a numpy array, or a tensor on the GPU, computed: the stream that made it is
        synchronized, so whoever reads it next sees the finished values; one copy and one normalization)."""
        if self.gpu is None:
            return np.stack(items)
        torch = self.gpu.torch
        batch = torch.stack(items)
        batch = batch if self.pixels else self.gpu.normalize(batch)
        if self.gpu.device.type == "cuda":
            torch.cuda.current_stream(self.gpu.device).synchronize()
        return batch

    def batches(self, groups):
        """Good items of each request -> that request's output batch (views into one batch on the GPU)."""
        if self.gpu is None:
            return [np.stack(items) for items in groups]
        return list(self.gpu.torch.split(self.batch([item for items in groups for item in items]),
                                         [len(items) for items in groups]))

    def bind_thread(self) -> None:
        """Make the decode GPU the current device of the calling thread (CUDA's current device is per thread)."""
        if self.gpu is not None:
            self.gpu.torch.cuda.set_device(self.gpu.device)

    def close(self):
        self.pool.shutdown(wait=False)


def make_preprocessor(args: dict, params: dict, pixels: bool) -> Preprocessor:
    """The Preprocessor of a model instance (Triton's initialize args), as its config's parameters say."""
    name = args["model_instance_name"]
    device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
    preprocess = Preprocessor(pixels, int(params.get("decode_threads", "0") or 0), decode_device(params, device),
                              lambda message: pb_utils.Logger.log_info(f"{name}: {message}"),
                              lambda message: pb_utils.Logger.log_warn(f"{name}: {message}"))
    if device != "cpu" and preprocess.gpu is None and params.get("gpu_decode") == "off":
        pb_utils.Logger.log_warn(f"{name}: JPEG decode with Pillow on the CPU: gpu_decode is off in its "
                                 f"config.pbtxt ({params.get('gpu_decode_reason', 'see the manifest')})")
    return preprocess


def check_warmup(config: dict, model_dir: Path, pixels: bool) -> None:
    """Decode every model_warmup file here, before Triton runs the samples: an unreadable one fails the load with
    its name. Triton 2.51 left to find it aborted now and then (boost::interprocess::lock_exception in the server
    process while it tore the failed instance down: 2 of 5 starts here)."""
    for sample in config.get("model_warmup", []):
        for tensor in sample.get("inputs", {}).values():
            if tensor.get("input_data_file"):
                path = model_dir / WARMUP_DIR / tensor["input_data_file"]
                try:
                    cpu_preprocess(path.read_bytes(), pixels)
                except (OSError, ImageError) as exc:
                    raise pb_utils.TritonModelException(
                        f"warmup sample {sample.get('name')!r} ({WARMUP_DIR}/{path.name}): {exc}") from None


def take_images(request, input_name: str):
    """The bytes of each image of the request: one per batch row (trailing zeros allowed), copied."""
    rows = pb_utils.get_input_tensor_by_name(request, input_name).as_numpy()
    datas = [row.tobytes() for row in rows.reshape(rows.shape[0], -1)]
    return datas, len(datas)


def group_results(per_request, results) -> list:
    """Per request: its list of preprocessed items, or an error response (any of its images unreadable, or none)."""
    out, start = [], 0
    for datas in per_request:
        mine = results[start:start + len(datas)]
        start += len(datas)
        errors = [str(r) for r in mine if isinstance(r, Exception)]
        if errors or not mine:
            message = "; ".join(errors) or "the request has no image"
            error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)  # the client's input: 400
            out.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        else:
            out.append(mine)
    return out


class TritonPythonModel:
    def initialize(self, args):
        config, params, self.input_name, self.output_name = read_config(args)
        name = args["model_instance_name"]
        self.preprocess = make_preprocessor(args, params, config["output"][0]["data_type"] == "TYPE_UINT8")
        check_warmup(config, Path(args["model_repository"]), self.preprocess.pixels)
        self.queue = RequestQueue(name, self._respond, lambda request: take_images(request, self.input_name),
                                  int(config.get("max_batch_size", 0)) or 1,
                                  int(params.get("max_queue_size", "0") or 0),
                                  int(params.get("queue_timeout_us", "0") or 0), self.preprocess.bind_thread,
                                  pb_utils.Logger.log_warn)

    def execute(self, requests):
        # the worker answers admitted requests through their response senders; refusals go back from here
        return self.queue.submit(requests)

    def _respond(self, per_request):
        responses = group_results(per_request, self.preprocess([d for datas in per_request for d in datas]))
        good = [i for i, r in enumerate(responses) if isinstance(r, list)]
        for i, batch in zip(good, self.preprocess.batches([responses[i] for i in good]) if good else []):
            # a GPU batch stays on the GPU (the classifier takes it from there); handed over as the tensor itself,
            # not a DLPack capsule, so the backend also synchronizes with the stream that computed it
            tensor = (pb_utils.Tensor(self.output_name, batch) if isinstance(batch, np.ndarray)
                      else pb_utils.Tensor.from_dlpack(self.output_name, batch))
            responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses

    def finalize(self):
        self.queue.close()
        self.preprocess.close()
