"""train.py: learns on real photographs, its weights deploy with build_repo.py and serve; resume; one-line errors."""

import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from PIL import Image

from conftest import ROOT, assert_one_line_error, run_cli
from mnv3kit.demo_data import SPLITS, TEST_FRACTION, VAL_FRACTION, digit_split, write as write_digits
from mnv3kit.model import MobileNetV3, build_model, recompute_batchnorm
from mnv3kit.parity import allowed_difference, constant_logits, parity_batch
from mnv3kit.preprocess import eval_transform, load_image
from mnv3kit.server import LocalTriton, Ports
from mnv3kit.spec import LOCAL_MODELS
from mnv3kit.weights import IMAGENET_URLS, load_model
from mnv3kit.cli.train import main as train_main

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): train loss ([\d.]+) acc ([\d.]+) \| val loss ([\d.]+) acc ([\d.]+) \| "
                        r"([\d.]+) images/s", re.M)
CLASSES = ["flower", "flower_bgr", "temple"]


def variants(photos):
    """Three classes from scikit-learn's two photographs: the flower, it with red and blue swapped, the temple."""
    china, flower = (Image.open(p).convert("RGB") for p in sorted(photos))
    r, g, b = flower.split()
    return {"flower": flower, "flower_bgr": Image.merge("RGB", (b, g, r)), "temple": china}


def random_view(img, rng, size=64):
    """A random square crop (40-90% of the shorter side), maybe mirrored, as a small image."""
    w, h = img.size
    side = int(min(w, h) * rng.uniform(0.4, 0.9))
    left, top = rng.randint(0, w - side), rng.randint(0, h - side)
    view = img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return view.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def write_class_folders(root, sources, per_class, rng):
    for name, src in sources.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            random_view(src, rng).save(root / name / f"{i:03d}.jpg", quality=90)


def make_image_folder(root, photos, n_train, n_val, classes=CLASSES, seed=0):
    """The original project's layout, root/{train,val}/CLASS/*.jpg, from different random views for train and val."""
    sources = {k: v for k, v in variants(photos).items() if k in classes}
    rng = random.Random(seed)
    write_class_folders(root / "train", sources, n_train, rng)
    write_class_folders(root / "val", sources, n_val, rng)
    return root


def truncated_copy(src, dest):
    dest.write_bytes(src.read_bytes()[: src.stat().st_size // 3])


@pytest.fixture(scope="module", autouse=True)
def one_thread_subprocesses():
    """The CLIs run with one intra-op thread: on a busy 2-core machine two OpenMP threads wait on each other
    (seen: 37 s instead of 8 s for the same run); the numbers are bit-identical either way."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory, photos):
    return make_image_folder(tmp_path_factory.mktemp("train-data") / "flower_data", photos, n_train=24, n_val=8)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, photos):
    """A 1000-class MobileNetV3-Small in torchvision's layout, standing in for ImageNet weights (not installable
    here): seeded init with BatchNorm statistics estimated on real photographs, so its features are scaled as
    trained ones are."""
    torch.manual_seed(0)
    model = MobileNetV3("small", 1000)
    recompute_batchnorm(model, [torch.from_numpy(parity_batch(photos, 16))])
    path = tmp_path_factory.mktemp("pretrained") / "mobilenet_v3_small.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, pretrained):
    out = tmp_path_factory.mktemp("trained") / "weights"
    proc = run_cli("train.py", "--data", data, "--arch", "small", "--epochs", 3, "--pretrained", pretrained,
                   "--batch-size", 8, "--lr", 1e-3, "--workers", 0, "-o", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, out


def epochs(stdout):
    return [dict(zip(("epoch", "of", "train_loss", "train_acc", "val_loss", "val_acc", "ips"), map(float, m)))
            for m in EPOCH_LINE.findall(stdout)]


def train_cli(capsys, *args):
    """train.py's main() in this process (a subprocess's torch import is most of an error case's cost), named as
    the script would be (the program name in messages comes from argv[0])."""
    argv0, sys.argv[0] = sys.argv[0], str(ROOT / "train.py")
    try:
        code = train_main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv[0] = argv0
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_training_learns_transfer_style(trained, pretrained):
    proc, out = trained
    log = epochs(proc.stdout)
    assert [e["epoch"] for e in log] == [1, 2, 3] and all(e["ips"] > 0 for e in log)
    losses = [e["train_loss"] for e in log]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.8 * losses[0], losses
    assert log[-1]["val_loss"] < log[0]["val_loss"]
    best = max(e["val_acc"] for e in log)
    assert best >= 0.8, log  # chance is 1/3
    assert "new 3-class classifier.3 (skipped classifier.3.bias (1000,), classifier.3.weight (1000, 1024))" \
        in proc.stdout
    assert "(features frozen)" in proc.stdout and "72 train, 24 val images" in proc.stdout
    assert f"best val accuracy {best:.4f}" in proc.stdout

    assert json.loads((out / "class_indices.json").read_text()) == {"0": "flower", "1": "flower_bgr", "2": "temple"}
    weights = torch.load(out / "MobileNetV3_Small.pth", weights_only=True)
    start = torch.load(pretrained, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())  # a plain state dict
    assert weights["classifier.3.weight"].shape == (3, 1024)
    # frozen features (and their BatchNorm statistics) are exactly what was loaded; the classifier moved
    assert all(torch.equal(weights[k], start[k]) for k in start if k.startswith("features."))
    assert not torch.equal(weights["classifier.0.weight"], start["classifier.0.weight"])
    last = torch.load(out / "last_small.pth", weights_only=True)
    assert last["epoch"] == 3 and last["best_acc"] == pytest.approx(best, abs=1e-4) and last["optimizer"]["state"]
    assert last["config"]["classes"] == CLASSES and last["config"]["freeze_features"] is True


def test_trained_weights_build_and_serve(trained, data, tmp_path):
    """best weights -> build_repo.py --target local -> the real tritonserver gives the in-process logits, labels
    and the validation accuracy training reported."""
    proc, out = trained
    repo = tmp_path / "model_repository"
    built = run_cli("build_repo.py", "--arch", "small", "--weights", out / "MobileNetV3_Small.pth",
                    "--labels", out / "class_indices.json", "--target", "local", "-o", repo)
    assert built.returncode == 0, built.stderr
    model, trained_weights = load_model("small", out / "MobileNetV3_Small.pth")
    assert trained_weights and model.num_classes == 3
    paths = sorted((data / "val").rglob("*.jpg"))
    truth = np.array([CLASSES.index(p.parent.name) for p in paths])
    x = np.stack([eval_transform(load_image(p)) for p in paths])
    batches = [slice(i, i + 8) for i in range(0, len(x), 8)]  # max_batch_size 8
    with torch.no_grad():  # in-process at the same batch sizes: CPU kernels round differently across sizes
        expected = np.concatenate([model(torch.from_numpy(x[b])).numpy() for b in batches])
    with LocalTriton(repo, Ports.free()) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        for spec in LOCAL_MODELS:
            served, top_labels = [], []
            for b in batches:
                inp = httpclient.InferInput(spec.input_name, list(x[b].shape), "FP32")
                inp.set_data_from_numpy(x[b], binary_data=True)
                served.append(client.infer(spec.name, [inp]).as_numpy(spec.output_name))
                top1 = httpclient.InferRequestedOutput(spec.output_name, class_count=1)
                result = client.infer(spec.name, [inp], outputs=[top1]).as_numpy(spec.output_name)
                top_labels += [row[0].decode().split(":")[2] for row in result]
            served = np.concatenate(served)
            np.testing.assert_allclose(served, expected, rtol=0, atol=allowed_difference(expected))
            assert (served.argmax(1) == expected.argmax(1)).all()
            assert top_labels == [CLASSES[i] for i in expected.argmax(1)]
            served_acc = float((served.argmax(1) == truth).mean())
            best = max(e["val_acc"] for e in epochs(proc.stdout))
            assert served_acc == pytest.approx(best, abs=1e-4), (spec.name, served_acc, best)


def test_resume_continues_exactly(tmp_path, photos):
    """From scratch: 2 epochs straight == 1 epoch, then --resume to 2 (with another worker count)."""
    data = make_image_folder(tmp_path / "data", photos, n_train=6, n_val=2, classes=["flower", "temple"])
    common = ("--data", data, "--arch", "small", "--batch-size", 4, "--lr", 1e-3, "--seed", 5)
    straight = run_cli("train.py", *common, "--epochs", 2, "--workers", 1, "-o", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    trainable, total = re.search(r"training ([\d,]+) of ([\d,]+) parameters", straight.stdout).groups()
    assert trainable == total  # from scratch: nothing frozen
    first = run_cli("train.py", *common, "--epochs", 1, "--workers", 0, "-o", tmp_path / "resumed")
    assert first.returncode == 0, first.stderr
    resumed = run_cli("train.py", "--data", data, "--epochs", 2, "--workers", 0, "-o", tmp_path / "resumed",
                      "--resume", tmp_path / "resumed" / "last_small.pth")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and [e["epoch"] for e in epochs(resumed.stdout)] == [2]
    a = torch.load(tmp_path / "straight" / "last_small.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last_small.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["config"] == b["config"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(v, b["optimizer"]["state"][i][k])
               for i, state in a["optimizer"]["state"].items() for k, v in state.items())
    without_speed = [[{k: v for k, v in h.items() if k != "images_per_s"} for h in run["history"]] for run in (a, b)]
    assert without_speed[0] == without_speed[1] and len(without_speed[0]) == 2
    assert (tmp_path / "resumed" / "MobileNetV3_Small.pth").is_file()


def test_from_scratch_on_tiny_data_warns_and_is_not_constant(tmp_path, photos):
    """3 classes x 10 images from scratch: without recomputed BatchNorm statistics the eval-mode model answered
    every image with the same logits (val accuracy exactly 1/3 every epoch)."""
    data = make_image_folder(tmp_path / "data", photos, n_train=10, n_val=5)
    proc = run_cli("train.py", "--data", data, "--arch", "small", "--epochs", 2, "--lr", 1e-3, "--workers", 0,
                   "-o", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert "training from scratch on 10 image(s) per class" in proc.stderr and "--pretrained imagenet" in proc.stderr
    model, _ = load_model("small", tmp_path / "w" / "MobileNetV3_Small.pth")
    val_images = np.stack([eval_transform(load_image(p)) for p in sorted((data / "val").rglob("*.jpg"))])
    assert constant_logits(model, val_images) is None
    assert max(e["val_acc"] for e in epochs(proc.stdout)) > 0.5  # chance (and the constant model) is 1/3


def test_pretrained_imagenet_through_torch_hub(tmp_path, photos, pretrained, capsys, monkeypatch):
    """--pretrained imagenet fetches torchvision's file for the arch into torch.hub's cache, checking the sha256
    prefix in its name (here from a file:// URL: no network in tests); offline and mismatch are one line."""
    from mnv3kit.repository import sha256

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    published = tmp_path / "published"
    published.mkdir()
    good = published / f"mobilenet_v3_small-{sha256(pretrained)[:8]}.pth"
    good.write_bytes(pretrained.read_bytes())
    data = make_image_folder(tmp_path / "data", photos, n_train=4, n_val=2, classes=["flower", "temple"])
    args = ("--data", data, "--arch", "small", "--epochs", 1, "--workers", 0, "--pretrained", "imagenet")

    monkeypatch.setitem(IMAGENET_URLS, "small", (published / "mobilenet_v3_small-0badc0de.pth").as_uri())
    proc = train_cli(capsys, *args, "-o", tmp_path / "offline")
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert_one_line_error(proc, "cannot get the ImageNet weights", IMAGENET_URLS["small"],
                          f"place it at {cache / 'mobilenet_v3_small-0badc0de.pth'}", "--pretrained PATH")
    wrong = published / "mobilenet_v3_small-0badc0de.pth"
    wrong.write_bytes(pretrained.read_bytes())  # there, but its sha256 does not start with 0badc0de
    proc = train_cli(capsys, *args, "-o", tmp_path / "mismatch")
    assert_one_line_error(proc, "cannot get the ImageNet weights", "invalid hash value")
    assert not (cache / wrong.name).exists()

    monkeypatch.setitem(IMAGENET_URLS, "small", good.as_uri())
    proc = train_cli(capsys, *args, "-o", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert f"pretrained {cache / good.name}: loaded" in proc.stdout and "(features frozen)" in proc.stdout
    assert (cache / good.name).read_bytes() == pretrained.read_bytes()
    good.unlink()  # a second run uses the cache
    assert train_cli(capsys, *args, "-o", tmp_path / "w2").returncode == 0
    with open(cache / good.name, "ab") as f:  # a cached file that changed is refused
        f.write(b"\0")
    assert_one_line_error(train_cli(capsys, *args, "-o", tmp_path / "w3"), "does not start with", "delete it")


def test_val_split_skips_unreadable_images(tmp_path, photos, pretrained):
    root = tmp_path / "flower_photos"
    sources = {k: v for k, v in variants(photos).items() if k in ("flower", "temple")}
    write_class_folders(root, sources, 8, random.Random(1))
    truncated_copy(root / "flower" / "000.jpg", root / "flower" / "truncated.jpg")
    (root / "temple" / "notes.jpg").write_text("not an image\n")
    (root / "temple" / "README.txt").write_text("ignored: not an image extension\n")
    proc = run_cli("train.py", "--data", root, "--val-split", 0.25, "--arch", "small", "--epochs", 1,
                   "--pretrained", pretrained, "--workers", 2, "-o", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "skipping 2 unreadable image(s)" in proc.stderr
    assert "truncated.jpg: corrupt or truncated" in proc.stderr and "notes.jpg: not an image" in proc.stderr
    assert "2 classes (flower, temple); 12 train, 4 val images; 2 unreadable skipped" in proc.stdout
    assert json.loads((tmp_path / "w" / "class_indices.json").read_text()) == {"0": "flower", "1": "temple"}
    assert len(epochs(proc.stdout)) == 1


def test_wrong_arch_pretrained_is_one_line(tmp_path, data):
    """As a user sees it: exit 2, one `train.py: error:` line, no traceback, before any image is read."""
    large = tmp_path / "mobilenet_v3_large.pth"
    torch.save(build_model("large", 1000).state_dict(), large)
    proc = run_cli("train.py", "--data", data, "--arch", "small", "--pretrained", large, "-o", tmp_path / "w")
    assert proc.returncode == 2
    assert_one_line_error(proc, "train.py: error:", str(large), "does not fit MobileNetV3-small", "wrong --arch")
    assert not (tmp_path / "w").exists()


BROKEN = {  # case -> what the one error line must say
    "missing_data": ("data folder", "does not exist"),
    "not_split": ("needs train/ and val/ folders", "--val-split 0.2"),
    "no_class_folders": ("has no class folders",),
    "empty_class": ("class folder", "roses has no images",),
    "val_classes_differ": ("must hold the same class folders", "missing in val/: temple"),
    "class_all_unreadable": ("train/temple has no readable images (2 refused", "corrupt or truncated"),
    "one_class": ("at least 2 classes",),
    "bad_val_split": ("--val-split must be between 0 and 1",),
    "val_split_of_split_layout": ("has a train/ folder",),
    "missing_pretrained": ("--pretrained file", "does not exist"),
    "garbage_pretrained": ("is not a PyTorch checkpoint",),
    "freeze_without_pretrained": ("--freeze-features needs --pretrained",),
    "resume_weights_only": ("holds weights only", "--pretrained"),
    "bad_batch_size": ("--batch-size must be >= 1",),
    "no_such_device": ("--device",),
}


def broken_args(tmp_path, photos, case):
    """Build the broken dataset or file of ``case``; the train.py arguments that meet it."""
    data = make_image_folder(tmp_path / "data", photos, n_train=2, n_val=1)
    train, val = data / "train", data / "val"
    if case == "missing_data":
        return ["--data", tmp_path / "nope"]
    if case == "not_split":
        return ["--data", train]  # class folders, but no --val-split
    if case == "no_class_folders":
        (tmp_path / "empty").mkdir()
        return ["--data", tmp_path / "empty", "--val-split", 0.2]
    if case == "empty_class":
        (train / "roses").mkdir()
        (val / "roses").mkdir()
        (train / "roses" / "notes.txt").write_text("no images here\n")
    elif case == "val_classes_differ":
        for p in (val / "temple").iterdir():
            p.unlink()
        (val / "temple").rmdir()
    elif case == "class_all_unreadable":
        first, second = sorted((train / "temple").iterdir())
        truncated_copy(first, first)
        second.write_bytes(b"")
    elif case == "one_class":
        (tmp_path / "one" / "flower").mkdir(parents=True)
        for p in (train / "flower").iterdir():
            p.rename(tmp_path / "one" / "flower" / p.name)
        return ["--data", tmp_path / "one", "--val-split", 0.5]
    elif case == "bad_val_split":
        return ["--data", train, "--val-split", 1.5]
    elif case == "val_split_of_split_layout":
        return ["--data", data, "--val-split", 0.2]
    elif case == "missing_pretrained":
        return ["--data", data, "--pretrained", tmp_path / "nope.pth"]
    elif case == "garbage_pretrained":
        (tmp_path / "x.pth").write_text("not a checkpoint")
        return ["--data", data, "--pretrained", tmp_path / "x.pth"]
    elif case == "freeze_without_pretrained":
        return ["--data", data, "--freeze-features"]
    elif case == "resume_weights_only":
        torch.save(build_model("small", 3).state_dict(), tmp_path / "MobileNetV3_Small.pth")
        return ["--data", data, "--resume", tmp_path / "MobileNetV3_Small.pth"]
    elif case == "bad_batch_size":
        return ["--data", data, "--batch-size", 0]
    elif case == "no_such_device":
        return ["--data", data, "--device", "tpu"]
    return ["--data", data]


@pytest.mark.parametrize("case", BROKEN)
def test_bad_input_is_one_line(tmp_path, photos, capsys, case):
    args = broken_args(tmp_path, photos, case)
    proc = train_cli(capsys, *args, "--arch", "small", "--epochs", 1, "--workers", 0, "-o", tmp_path / "w")
    assert proc.returncode == 2
    assert_one_line_error(proc, "train.py: error:", *BROKEN[case])


@pytest.mark.parametrize("extra, fragment", [
    (("--epochs", 3), "already finished epoch 3: pass --epochs above 3"),
    (("--epochs", 4, "--seed", 7), "was trained with --seed 0, not --seed 7"),
    (("--epochs", 4, "--arch", "large"), "was trained with --arch small, not --arch large"),
    (("--epochs", 4, "--no-freeze-features"), "was trained with --freeze-features, not --no-freeze-features"),
    (("--epochs", 4, "--val-split", 0.2), "was trained with no --val-split, not --val-split 0.2"),
])
def test_resume_refuses_a_different_run(trained, data, tmp_path, capsys, extra, fragment):
    _, out = trained
    proc = train_cli(capsys, "--data", data, "--resume", out / "last_small.pth", "--workers", 0,
                     "-o", tmp_path / "w", *extra)
    assert_one_line_error(proc, fragment)


def test_resume_refuses_other_classes(trained, tmp_path, photos, capsys):
    _, out = trained
    other = make_image_folder(tmp_path / "other", photos, n_train=2, n_val=1, classes=["flower", "temple"])
    proc = train_cli(capsys, "--data", other, "--resume", out / "last_small.pth", "--epochs", 4, "--workers", 0,
                     "-o", tmp_path / "w")
    assert_one_line_error(proc, "was trained on classes flower, flower_bgr, temple", "has flower, temple")


def test_help_explains_layout_and_outputs():
    proc = run_cli("train.py", "--help")
    assert proc.returncode == 0
    for text in ("--data", "--val-split", "--pretrained", "--freeze-features", "--no-freeze-features", "--resume",
                 "--amp", "--workers", "--seed", "--lr", "--batch-size", "--epochs", "DATA/train/CLASS/*.jpg",
                 "class_indices.json", "MobileNetV3_Small.pth", "last_small.pth", "build_repo.py"):
        assert text in proc.stdout, text


# ------------------------------------------------------------------------------------ the demo's digits (make demo)

@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digit_split_is_disjoint_stratified_and_seeded(digits):
    split = digit_split(digits.target, seed=0)
    assert list(split) == list(SPLITS)
    parts = [set(split[name]) for name in SPLITS]
    assert sum(map(len, parts)) == len(digits.target)  # with the union below: every image in exactly one part
    assert set().union(*parts) == set(range(len(digits.target)))
    assert digit_split(digits.target, seed=0) == split
    assert set(digit_split(digits.target, seed=1)["test"]) != parts[2]
    for digit in range(10):
        n = int((digits.target == digit).sum())
        counts = {name: int((digits.target[split[name]] == digit).sum()) for name in SPLITS}
        assert abs(counts["test"] - TEST_FRACTION * n) <= 1 and abs(counts["val"] - VAL_FRACTION * n) <= 1, counts


def test_written_digits_are_the_split(digits, tmp_path):
    """DIR/PART/DIGIT/NNNN.png: NNNN in PART's indices, DIGIT its label, the 8×8 pixels enlarged, ink dark."""
    counts = write_digits(tmp_path / "digits")
    split = digit_split(digits.target)
    assert counts == {name: len(split[name]) for name in SPLITS}
    for name in SPLITS:
        files = sorted((tmp_path / "digits" / name).rglob("*.png"))
        assert sorted(int(f.stem) for f in files) == sorted(split[name])
        assert all(int(f.parent.name) == digits.target[int(f.stem)] for f in files)
    one = tmp_path / "digits" / "test" / str(digits.target[split["test"][0]]) / f"{split['test'][0]:04d}.png"
    pixels = np.asarray(load_image(one).convert("L"))
    assert pixels.shape == (64, 64)
    expected = np.round(255 - digits.images[split["test"][0]] * 255 / 16)
    np.testing.assert_array_equal(pixels[::8, ::8], expected)
    proc = subprocess.run([sys.executable, "-m", "mnv3kit.cli.demo_data", "write", tmp_path / "digits"], cwd=ROOT,
                          capture_output=True, text=True)
    assert_one_line_error(proc, "python -m mnv3kit.cli.demo_data: error:", "is not empty")


def test_shipped_demo_weights_classify_held_out_digits(tmp_path):
    """demo/weights (train.py on DIR/train, see demo/README.md) in-process on the held-out digits it never saw."""
    write_digits(tmp_path / "digits")
    labels = json.loads((ROOT / "demo" / "weights" / "class_indices.json").read_text())
    assert labels == {str(d): str(d) for d in range(10)}
    model, trained_weights = load_model("small", ROOT / "demo" / "weights" / "MobileNetV3_Small.pth")
    assert trained_weights
    paths = sorted((tmp_path / "digits" / "test").rglob("*.png"))
    truth = np.array([int(p.parent.name) for p in paths])
    x = torch.from_numpy(np.stack([eval_transform(load_image(p)) for p in paths]))
    with torch.no_grad():
        predicted = np.concatenate([model(x[i:i + 64]).argmax(1).numpy() for i in range(0, len(x), 64)])
    assert (predicted == truth).mean() >= 0.9
