"""The image ensemble's batched tensor preprocessing (TensorDecoder: nvImageCodec decode, Pillow's resampling as two
matrix products) and the accuracy gate that decides whether GPU instances use it. The GPU runs the same code on
cuda; here nvImageCodec decodes with its CPU backend (libjpeg-turbo) and torch runs on the CPU."""

import io
import json

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from mnv3kit.backend import preprocess_model
from mnv3kit.backend.preprocess_model import FANCY_UPSAMPLING, Preprocessor, decode_device
from mnv3kit.build import BuildOptions, build
from mnv3kit.gate import MIN_AGREEMENT, decode_gate, photo_views
from mnv3kit.measure.edge_images import GOOD, make_edge_cases
from mnv3kit.measure.image_bench import make_jpegs
from mnv3kit.preprocess import decode_image, eval_pixels, normalize
from mnv3kit.render import ConfigOptions, GpuOptions, Instances
from mnv3kit.spec import PREPROCESS
from mnv3kit.validate import check_repository
from mnv3kit.weights import load_model

from conftest import ROOT

DEMO_WEIGHTS = ROOT / "demo" / "weights" / "MobileNetV3_Small.pth"


@pytest.fixture(scope="module")
def views(photos):
    return photo_views(photos, 96)


@pytest.fixture(scope="module")
def tensor_path():
    pre = Preprocessor(True, device="cpu", log=lambda message: None)
    assert pre.gpu is not None and "fancy upsampling" in pre.gpu.name
    yield pre
    pre.close()


def crops(pre, datas):
    out = pre(datas)
    assert not [x for x in out if isinstance(x, Exception)]
    return np.stack([x.numpy() if isinstance(x, torch.Tensor) else x for x in out])


@pytest.fixture(scope="module")
def classify():
    model, _ = load_model("small", DEMO_WEIGHTS)
    model.eval()

    def run(pixels):
        with torch.no_grad():
            return model(torch.from_numpy(normalize(pixels))).numpy()
    return run


def test_one_batch_of_mixed_sizes_gives_pillows_pixels(tensor_path, views, photos, tmp_path):
    """Every subsampling, 20 quality/size mixes, upscaled tiny and huge images, in one call: Pillow's pixels exactly
    (the resampling uses Pillow's own fixed-point coefficients)."""
    edge = make_edge_cases(photos[1], tmp_path / "edge")
    files = [*photos, *make_jpegs(photos, tmp_path / "jpeg", (500, 375)), *(edge[name] for name in GOOD)]
    datas = [v.jpeg for v in views] + [f.read_bytes() for f in files]
    reference = np.stack(_pillow(datas))
    got = crops(tensor_path, datas)
    assert {v.subsampling for v in views} == {"4:4:4", "4:2:2", "4:2:0"}
    assert np.abs(got.astype(int) - reference.astype(int)).max() <= 1


def _pillow(datas):
    return [eval_pixels(decode_image(d)) for d in datas]


@pytest.mark.parametrize("size,mode", [((16, 16), "RGB"), ((2000, 40), "RGB"), ((40, 2000), "RGB"),
                                       ((256, 256), "RGB"), ((225, 300), "RGB"), ((4000, 3000), "RGB"),
                                       ((640, 427), "L")])
def test_extreme_shapes_and_gray(tensor_path, photos, size, mode):
    img = Image.open(photos[0]).convert(mode).resize(size)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    got = crops(tensor_path, [buf.getvalue()])[0]
    assert np.abs(got.astype(int) - _pillow([buf.getvalue()])[0].astype(int)).max() <= 1


def test_large_batches_go_in_parts(tensor_path, views, monkeypatch):
    datas = [v.jpeg for v in views[:24]]
    whole = crops(tensor_path, datas)
    monkeypatch.setattr(preprocess_model, "PAD_LIMIT", 3 * 300 * 300)  # a few images per part
    np.testing.assert_array_equal(crops(tensor_path, datas), whole)


def test_the_resampling_matrices_cache_is_bounded(views, monkeypatch):
    monkeypatch.setattr(preprocess_model, "WEIGHT_CACHE", 3)
    decoder = preprocess_model.TensorDecoder("cpu")
    decoder([v.jpeg for v in views[:12]])
    assert len({Image.open(io.BytesIO(v.jpeg)).size for v in views[:12]}) > 3 and len(decoder.weights) == 3


def test_undecodable_images_fall_back_or_fail_alone(tensor_path, photos):
    good = photos[0].read_bytes()
    out = tensor_path([good, good[: len(good) // 2] + b"\xff\xd9", b"not an image", good])
    assert isinstance(out[2], Exception) and "not an image" in str(out[2])
    assert not isinstance(out[1], Exception) or "truncated" in str(out[1])
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[3]))


def test_nvimgcodec_header_check_agrees_with_pillows(tensor_path, views, photos, tmp_path):
    """TensorDecoder.decodable (nvImageCodec's header parser, Pillow only for EXIF) takes exactly what
    gpu_decodable (Pillow's header) takes: photos, views, edge cases, CMYK and EXIF-rotated JPEGs, broken files."""
    edge = make_edge_cases(photos[1], tmp_path / "edge")
    datas = [p.read_bytes() for p in photos] + [v.jpeg for v in views] + [
        p.read_bytes() if p.is_file() else b"" for p in edge.values()]
    datas += [datas[0][:len(datas[0]) // 2], datas[0] + bytes(100), b"\xff\xd8garbage\xff\xd9"]
    expected = [preprocess_model.gpu_decodable(d) for d in datas]
    assert tensor_path.gpu.decodable(datas) == expected
    assert sum(expected) > len(views) and not all(expected)


def test_the_gate_passes_the_tensor_path(tensor_path, views, classify):
    report = decode_gate("tensor path", views, lambda datas: crops(tensor_path, datas), classify)
    assert report.ok and report.top1_agreement == 1.0 and report.images == len(views)
    assert set(report.pixels) == {"4:4:4", "4:2:2", "4:2:0"} and max(report.pixels.values()) <= 1
    assert "tensor path vs Pillow on 96 photo views: top-1 100.00 %" in report.line()


def test_the_gate_measures_nvjpeg_like_chroma_and_refuses_a_wrong_path(views, classify):
    """Without fancy upsampling (nvJPEG's way) 4:2:0 pixels move by more than 2 levels: the report shows it. A path
    that swaps the colour channels changes classes: the gate refuses it."""
    plain = preprocess_model.nvimgcodec_decoder(torch.device("cpu"), ":fancy_upsampling=0")
    resizer = preprocess_model.TensorDecoder("cpu")
    assert FANCY_UPSAMPLING == ":fancy_upsampling=1"

    def nearest_chroma(datas):
        images = [torch.from_numpy(np.asarray(img.cpu())).permute(2, 0, 1) for img in plain.decode(datas)]
        return resizer.resize_crop(images).numpy()

    report = decode_gate("plain upsampling", views, nearest_chroma, classify)
    assert report.pixels["4:2:0"] > 2 and report.pixels["4:4:4"] <= 1
    swapped = decode_gate("swapped", views, lambda datas: nearest_chroma(datas)[:, ::-1].copy(), classify)
    assert not swapped.ok and swapped.top1_agreement < MIN_AGREEMENT


def test_gpu_instances_decode_where_the_build_said(tmp_path):
    """Built here (no CUDA): the gate cannot run, so GPU instances are told to use Pillow, and say why;
    --gpu-decode on writes on. CPU instances never decode on a device."""
    out = tmp_path / "repo"
    cfg = ConfigOptions(target="local", instances=Instances("KIND_GPU", 1))
    build(BuildOptions(arch="small", output=out, config=cfg, models=("pt",), ensemble="pt"))
    config = text_format.Parse((out / PREPROCESS / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["gpu_decode"] == "off" and "no CUDA device" in params["gpu_decode_reason"]
    assert json.loads((out / "manifest.json").read_text())["gpu_decode"]["use"] == "off"
    assert decode_device(params, "cuda:0") is None and decode_device({"gpu_decode": "on"}, "cuda:0") == "cuda:0"
    assert decode_device({"gpu_decode": "on"}, "cpu") is None
    assert check_repository(out).ok

    on = tmp_path / "on"
    build(BuildOptions(arch="small", output=on, models=("pt",), ensemble="pt",
                       config=ConfigOptions(target="local", instances=Instances("KIND_GPU", 1),
                                            gpu=GpuOptions(decode="on"))))
    assert 'key: "gpu_decode" value: { string_value: "on" }' in (on / PREPROCESS / "config.pbtxt").read_text()
