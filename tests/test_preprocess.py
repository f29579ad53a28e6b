"""The single preprocessing definition: torchvision semantics, every odd image mode, clear refusals."""

import random

import numpy as np
import pytest
from PIL import Image

from mnv3kit.measure.edge_images import BAD, GOOD, make_edge_cases
from mnv3kit.preprocess import (ImageError, center_crop, eval_transform, load_image, preprocess_file,
                                random_resized_crop, resize_shorter, train_transform)
from mnv3kit.spec import MEAN, STD


@pytest.fixture(scope="module")
def edge(photos, tmp_path_factory):
    return make_edge_cases(photos[0], tmp_path_factory.mktemp("edge"))


def test_resize_and_crop_follow_torchvision():
    img = Image.new("RGB", (640, 427))
    assert resize_shorter(img).size == (383, 256)  # int(256 * 640 / 427)
    assert resize_shorter(Image.new("RGB", (300, 900))).size == (256, 768)
    assert center_crop(Image.new("RGB", (383, 256))).size == (224, 224)


def test_normalization_of_a_constant_image():
    x = eval_transform(Image.new("RGB", (300, 300), (255, 0, 128)))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    expected = [(1.0 - MEAN[0]) / STD[0], (0.0 - MEAN[1]) / STD[1], (128 / 255 - MEAN[2]) / STD[2]]
    np.testing.assert_allclose(x.reshape(3, -1).mean(1, dtype=np.float64), expected, rtol=1e-6)
    assert np.ptp(x.reshape(3, -1), axis=1).max() == 0  # constant in, constant out


@pytest.mark.parametrize("name", GOOD)
def test_odd_images_become_rgb_tensors(edge, name):
    x = preprocess_file(edge[name])
    assert x.shape == (3, 224, 224) and np.isfinite(x).all()


def test_exif_orientation_is_applied(edge, photos):
    upright = eval_transform(Image.open(photos[0]).convert("RGB"))
    rotated = preprocess_file(edge["exif_rotated"])
    assert np.abs(rotated - upright).mean() < 0.1  # JPEG re-encoding noise only
    assert np.abs(np.rot90(rotated, axes=(1, 2)) - upright).mean() > 0.3


def test_sixteen_bit_is_scaled_not_clipped(edge):
    img = load_image(edge["gray16"])
    assert 50 < np.asarray(img).mean() < 200  # clipping would make it nearly white


def test_rgba_composited_on_white(edge):
    img = load_image(edge["rgba"])
    assert img.mode == "RGB"
    assert np.asarray(img)[:, :, :][0].mean() > 250  # alpha 0 on the first row -> white


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_are_refused_with_the_cause(edge, name):
    with pytest.raises(ImageError, match=BAD[name]) as err:
        preprocess_file(edge[name])
    assert str(edge[name].name) in str(err.value)


def test_train_transform_is_seeded_and_shaped(photos):
    img = load_image(photos[1])
    a = train_transform(img, random.Random(3))
    b = train_transform(img, random.Random(3))
    assert a.shape == (3, 224, 224) and np.array_equal(a, b)
    assert not np.array_equal(a, train_transform(img, random.Random(4)))


def test_random_resized_crop_bounds():
    img = Image.new("RGB", (500, 40))  # extreme aspect forces the fallback path sometimes
    rng = random.Random(0)
    for _ in range(50):
        assert random_resized_crop(img, rng).size == (224, 224)
