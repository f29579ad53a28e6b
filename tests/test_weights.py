"""Checkpoints and labels: every supported form loads, every bad one is a one-line error."""

import argparse
import json

import pytest
import torch

from conftest import assert_one_line_error, run_cli
from mnv3kit.errors import KitError
from mnv3kit.model import build_model
from mnv3kit.parity import sample_photos
from mnv3kit.weights import load_labels, load_model, read_checkpoint


@pytest.fixture(scope="module")
def small_state():
    return build_model("small", 3, seed=7).state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "nested_module_prefix"])
def test_checkpoint_forms_load(tmp_path, small_state, wrap):
    state = {
        "plain": small_state,
        "state_dict": {"state_dict": small_state, "epoch": 3},
        "model": {"model": small_state, "optimizer": {}},
        "module_prefix": {f"module.{k}": v for k, v in small_state.items()},
        "nested_module_prefix": {"state_dict": {f"module.{k}": v for k, v in small_state.items()}},
    }[wrap]
    path = tmp_path / "w.pth"
    torch.save(state, path)
    model, trained = load_model("small", path)
    assert trained and model.num_classes == 3  # inferred from classifier.3.weight
    x = torch.randn(2, 3, 224, 224)
    reference = build_model("small", 3)
    reference.load_state_dict(small_state)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))


def test_wrong_arch_names_the_right_one(tmp_path, small_state):
    path = tmp_path / "small.pth"
    torch.save(small_state, path)
    with pytest.raises(KitError) as err:
        load_model("large", path)
    message = str(err.value)
    assert message == (f"{path} does not fit MobileNetV3-large, wrong --arch: it looks like a MobileNetV3-small "
                       f"checkpoint, pass --arch small")


def test_not_mobilenetv3_lists_the_problems(tmp_path, small_state):
    path = tmp_path / "other.pth"
    torch.save({**small_state, "head.weight": torch.zeros(2)}, path)
    with pytest.raises(KitError) as err:
        load_model("large", path)
    message = str(err.value)
    assert "missing" in message and "unexpected" in message and "misshaped" in message
    assert "not a MobileNetV3 checkpoint" in message


def test_misshaped_only(tmp_path, small_state):
    state = dict(small_state)
    state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(KitError, match=r"misshaped 1: features\.0\.0\.weight \(8, 3, 3, 3\) != \(16, 3, 3, 3\)"):
        load_model("small", path)


def test_missing_key_named(tmp_path, small_state):
    state = {k: v for k, v in small_state.items() if k != "features.1.block.0.0.weight"}
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(KitError, match=r"missing 1: features\.1\.block\.0\.0\.weight"):
        load_model("small", path)


def test_labels_forms(tmp_path):
    seed_json = tmp_path / "class_indices.json"
    seed_json.write_text(json.dumps({"0": "daisy", "1": "dandelion", "2": "roses", "3": "sunflowers", "4": "tulips"}))
    assert load_labels(seed_json, 5) == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    txt = tmp_path / "labels.txt"
    txt.write_text("cat\ndog\n\n")
    assert load_labels(txt, 2) == ["cat", "dog"]
    assert load_labels(None, 3) == ["class_0", "class_1", "class_2"]
    with pytest.raises(KitError, match="has 2 labels but the model has 5 classes"):
        load_labels(txt, 5)
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"0": "a", "2": "b"}))
    with pytest.raises(KitError, match="without gaps"):
        load_labels(gap, 2)
    broken = tmp_path / "broken.json"
    broken.write_text("{\"0\": ")
    with pytest.raises(KitError, match="not valid JSON"):
        load_labels(broken, 1)


def _bad_files(tmp_path, small_state):
    good = tmp_path / "good.pth"
    torch.save(small_state, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    tensors_only = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], tensors_only)
    photo = tmp_path / "photo.pth"
    photo.write_bytes(sample_photos()[0].read_bytes())
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": small_state, "args": argparse.Namespace(lr=0.1)}, pickled)
    return {"missing": (tmp_path / "nope.pth", "does not exist"),
            "truncated": (truncated, "is not a readable PyTorch checkpoint"),
            "text": (text, "is not a PyTorch checkpoint"),
            "a JPEG": (photo, "is not a PyTorch checkpoint"),
            "pickled objects": (pickled, "re-save it as a state dict"),
            "empty": (empty, "empty"),
            "not a state dict": (tensors_only, "no state dict"),
            "wrong arch": (good, "pass --arch small")}


def test_bad_weight_files_direct(tmp_path, small_state):
    for name, (path, fragment) in _bad_files(tmp_path, small_state).items():
        with pytest.raises(KitError, match=fragment):
            load_model("large", path)
    with pytest.raises(KitError, match="no 'classifier.3.weight'"):
        path = tmp_path / "headless.pth"
        torch.save({k: v for k, v in small_state.items() if not k.startswith("classifier")}, path)
        read_checkpoint(path) and load_model("small", path)


def test_bad_weight_files_cli(tmp_path, small_state):
    """The CLI turns each into one line on stderr and exit 2, and writes no repository."""
    out = tmp_path / "repo"
    for name, (path, fragment) in _bad_files(tmp_path, small_state).items():
        proc = run_cli("build_repo.py", "--arch", "large", "--weights", path, "-o", out)
        assert proc.returncode == 2, name
        error = assert_one_line_error(proc, fragment)
        assert len(error) < 300 and "weights_only" not in error, error  # PyTorch's advice is not the fix here
        assert not out.exists()
    labels = tmp_path / "labels.txt"
    labels.write_text("only\ntwo\n")
    proc = run_cli("build_repo.py", "--arch", "small", "--weights", tmp_path / "good.pth", "--labels", labels, "-o", out)
    assert_one_line_error(proc, "has 2 labels but the model has 3 classes")
