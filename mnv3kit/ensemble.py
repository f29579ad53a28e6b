"""The image model: `mobilenetv3_image` = `mobilenetv3_preprocess` (encoded bytes -> tensor) -> a classifier.

An ensemble of the two models, or (--image-model fused, local target) one python model that runs both in one
process (mnv3kit/backend/image_model.py). Renders the configs from mnv3kit/templates/, writes the models' files
(local: the python-backend models and the kit's preprocessing copied beside them; ngc: the DALI pipeline) and
validates them for --check: every ensemble step names a model of the repository, every mapped tensor exists in that
model's config, and the tensors that flow between steps (and in and out of the ensemble) agree in data type and
dims; a fused model's files and classifier are there.
"""

import io
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from tritonclient.grpc import model_config_pb2

from .backend import (FUSED_COPIES, IMAGE_MODEL, KIT_DIR, PREPROCESS_MODEL, PYTHON_MODEL_FILES, VENDORED,
                      install_python_model)
from .errors import KitError
from .render import ConfigOptions, _env, _python_parameters, instance_queue_size, queue_size, warmup_batches
from .spec import (ENSEMBLE, ENSEMBLE_CLASSIFIERS, ENSEMBLE_OUTPUT, ENSEMBLE_PLATFORM, IMAGE_INPUT, IMAGE_SIZE,
                   INPUT_DIMS, LABELS_FILE, MEAN, PREPROCESS, PREPROCESSED, RESIZE_SIZE, STD, WARMUP_DIR, ModelSpec)

DataType = model_config_pb2.DataType
IMAGE_MODELS = (ENSEMBLE, PREPROCESS)
IMAGE_MODEL_KINDS = ("ensemble", "fused")  # --image-model
VENDOR_DIR = "mnv3kit_preprocess"  # <preprocess>/<version>/mnv3kit_preprocess/: the kit's preprocessing, for model.py
DALI_FILE = "dali.py"  # the pipeline the DALI backend serializes at load
DALI_TEMPLATE = "mobilenetv3_preprocess_dali.py.j2"
WARMUP_FILE = "image.jpg"


def warmup_jpeg() -> bytes:
    """A 640x480 baseline JPEG (a colour gradient), the size of a typical photo: the image model_warmup decodes."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def classifier_for(key: str, target: str, kind: str = "ensemble") -> ModelSpec:
    offered = {spec.key: spec for spec in ENSEMBLE_CLASSIFIERS[target]}
    if kind not in IMAGE_MODEL_KINDS:
        raise KitError(f"--image-model {kind}: choose one of {', '.join(IMAGE_MODEL_KINDS)}")
    if kind == "fused" and target != "local":
        raise KitError("--image-model fused runs in the python backend: --target local (on NVIDIA's image the "
                       "ensemble's steps run inside tritonserver, DALI and the native backends)")
    if key not in offered:
        raise KitError(f"--ensemble {key}: on the {target} target the image ensemble can feed {', '.join(offered)}")
    return offered[key]


def image_classifier(config: model_config_pb2.ModelConfig) -> str:
    """The classifier an image model feeds: the ensemble's last step, or a fused model's `classifier` parameter."""
    if config.platform == ENSEMBLE_PLATFORM:
        return config.ensemble_scheduling.step[-1].model_name
    return config.parameters["classifier"].string_value


def fused_parameters(classifier: ModelSpec, opts: ConfigOptions) -> Dict[str, str]:
    """What a fused image model adds to the preprocessing's parameters: the classifier, its input, its runner's."""
    params = {"classifier": classifier.name, "classifier_input": classifier.input_dtype,
              "classifier_input_name": classifier.input_name}
    params.update({k: v for k, v in _python_parameters(classifier, opts).items()
                   if k not in ("max_queue_size", "queue_timeout_us", "FORCE_CPU_ONLY_INPUT_TENSORS")})
    return params


def render_image_configs(classifier: ModelSpec, opts: ConfigOptions, gpu_decode: Optional[dict] = None,
                         kind: str = "ensemble") -> Dict[str, str]:
    """model name -> config.pbtxt text: the preprocessing model and the ensemble, or the fused image model.
    ``gpu_decode``: the build's decision on GPU JPEG decode ({"use": "on"|"off", "reason": ...}) for GPU instances
    on the local target."""
    common = dict(max_batch_size=opts.max_batch_size, image_input=IMAGE_INPUT, classifier=classifier,
                  target=opts.target)
    env = _env()
    step = dict(template=f"{PREPROCESS}.pbtxt.j2", input_dims=INPUT_DIMS, instance=opts.instances,
                batching=opts.batching, queue_size=queue_size(opts), queue_in_model=opts.target == "local",
                instance_queue_size=instance_queue_size(opts), warmup_batches=warmup_batches(opts),
                warmup_file=WARMUP_FILE, warmup_bytes=len(warmup_jpeg()), gpu_decode=gpu_decode,
                num_classes=opts.num_classes, labels_file=LABELS_FILE, **common)
    if kind == "fused":
        return {ENSEMBLE: env.get_template(step["template"]).render(
            name=ENSEMBLE, output=ENSEMBLE_OUTPUT, fused=fused_parameters(classifier, opts), **step)}
    return {
        PREPROCESS: env.get_template(step["template"]).render(name=PREPROCESS, output=PREPROCESSED, fused=None,
                                                              **step),
        ENSEMBLE: env.get_template(f"{ENSEMBLE}.pbtxt.j2").render(
            template=f"{ENSEMBLE}.pbtxt.j2", name=ENSEMBLE, output=ENSEMBLE_OUTPUT, preprocess=PREPROCESS,
            preprocessed=PREPROCESSED, num_classes=opts.num_classes, labels_file=LABELS_FILE, **common),
    }


def render_dali_pipeline() -> str:
    return _env().get_template(DALI_TEMPLATE).render(
        template=DALI_TEMPLATE, image_input=IMAGE_INPUT, resize=RESIZE_SIZE, crop=IMAGE_SIZE, mean=MEAN, std=STD)


def write_image_models(repo: Path, classifier: ModelSpec, opts: ConfigOptions, labels: List[str],
                       gpu_decode: Optional[dict] = None, kind: str = "ensemble") -> None:
    """The image model's directories with their configs and files, into ``repo`` (a build's staging directory)."""
    fused = kind == "fused"
    model_dir = repo / (ENSEMBLE if fused else PREPROCESS)
    version = model_dir / str(opts.version)
    version.mkdir(parents=True)
    if opts.target == "local":
        install_python_model(IMAGE_MODEL if fused else PREPROCESS_MODEL, version)
        if fused:
            for source, copy in FUSED_COPIES.items():
                shutil.copyfile(source, version / copy)
        (version / VENDOR_DIR).mkdir()
        for name in VENDORED:
            shutil.copyfile(KIT_DIR / name, version / VENDOR_DIR / name)
    else:
        (version / DALI_FILE).write_text(render_dali_pipeline())
    (model_dir / WARMUP_DIR).mkdir()
    (model_dir / WARMUP_DIR / WARMUP_FILE).write_bytes(warmup_jpeg())
    (repo / ENSEMBLE / str(opts.version)).mkdir(parents=True, exist_ok=True)  # an ensemble's is empty
    (repo / ENSEMBLE / LABELS_FILE).write_text("\n".join(labels) + "\n")
    for name, text in render_image_configs(classifier, opts, gpu_decode, kind).items():
        (repo / name / "config.pbtxt").write_text(text)


# ---------------------------------------------------------------- --check

def _tensors(config: model_config_pb2.ModelConfig, kind: str) -> Dict[str, Tuple[int, Tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in getattr(config, kind)}


def _describe(tensor: Tuple[int, Tuple[int, ...]]) -> str:
    return f"{DataType.Name(tensor[0])} {list(tensor[1])}"


def _dims_match(a: Tuple[int, ...], b: Tuple[int, ...]) -> bool:
    """Equal rank, each dim equal or variable (-1) on either side."""
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


def check_ensemble(repo: Path, config: model_config_pb2.ModelConfig,
                   parse: Callable[[Path], model_config_pb2.ModelConfig]) -> List[str]:
    """Problems of one ensemble config against the configs of the models its steps name."""
    where = f"{config.name}/config.pbtxt"
    steps = config.ensemble_scheduling.step
    if not steps:
        return [f"{where}: an ensemble needs ensemble_scheduling with at least one step"]
    problems: List[str] = []
    available = dict(_tensors(config, "input"))  # tensor name in the ensemble -> (dtype, dims)
    for number, step in enumerate(steps, 1):
        at = f"{where}: step {number} ({step.model_name})"
        model_dir = repo / step.model_name
        if not (model_dir / "config.pbtxt").is_file():
            problems.append(f"{at}: no model {step.model_name!r} in the repository")
            continue
        try:
            model = parse(model_dir / "config.pbtxt")
        except KitError as exc:
            problems.append(f"{at}: {exc}")
            continue
        if config.max_batch_size > model.max_batch_size:
            problems.append(f"{at}: ensemble max_batch_size {config.max_batch_size} exceeds the model's "
                            f"{model.max_batch_size}")
        inputs, outputs = _tensors(model, "input"), _tensors(model, "output")
        for key, value in step.input_map.items():
            if key not in inputs:
                problems.append(f"{at}: input_map key {key!r} is not an input of {step.model_name} "
                                f"(inputs: {sorted(inputs)})")
            elif value not in available:
                problems.append(f"{at}: input_map value {value!r} is neither an ensemble input nor an output of "
                                f"an earlier step")
            elif available[value][0] != inputs[key][0] or not _dims_match(available[value][1], inputs[key][1]):
                problems.append(f"{at}: {value!r} is {_describe(available[value])}, but {step.model_name} input "
                                f"{key!r} is {_describe(inputs[key])}")
        for key in set(inputs) - set(step.input_map):
            problems.append(f"{at}: input {key!r} of {step.model_name} is not mapped")
        for key, value in step.output_map.items():
            if key not in outputs:
                problems.append(f"{at}: output_map key {key!r} is not an output of {step.model_name} "
                                f"(outputs: {sorted(outputs)})")
            else:
                available[value] = outputs[key]
    for out in config.output:
        problems += _check_labels(repo / config.name, out)
    for name, tensor in _tensors(config, "output").items():
        if name not in available:
            problems.append(f"{where}: ensemble output {name!r} is produced by no step")
        elif available[name][0] != tensor[0] or not _dims_match(available[name][1], tensor[1]):
            problems.append(f"{where}: ensemble output {name!r} is {_describe(tensor)}, the step producing it gives "
                            f"{_describe(available[name])}")
    return problems


def check_preprocess(model_dir: Path, config: model_config_pb2.ModelConfig) -> List[str]:
    """The contract and files of a model that takes encoded images: the preprocessing model, or the fused image
    model (its output the logits, and its classifier's artifact in the repository)."""
    where = f"{model_dir.name}/config.pbtxt"
    fused = config.name == ENSEMBLE
    problems = []
    if len(config.input) != 1 or len(config.output) != 1:
        return [f"{where}: expected one input (encoded image bytes) and one output"]
    inp, out = config.input[0], config.output[0]
    if inp.data_type != model_config_pb2.TYPE_UINT8 or list(inp.dims) != [-1]:
        problems.append(f"{where}: input {inp.name!r} must be TYPE_UINT8 [-1] (the file's bytes)")
    elif not inp.allow_ragged_batch and config.max_batch_size > 0:
        problems.append(f"{where}: input {inp.name!r} needs allow_ragged_batch: files differ in length")
    if fused:
        problems += _check_fused(model_dir, config, where)
    elif tuple(out.dims) != INPUT_DIMS:
        problems.append(f"{where}: output dims {list(out.dims)}, expected {list(INPUT_DIMS)}")
    files = {"python": [*PYTHON_MODEL_FILES] + [f"{VENDOR_DIR}/{name}" for name in VENDORED]
             + (list(FUSED_COPIES.values()) if fused else []), "dali": [DALI_FILE]}
    if config.backend not in files:
        return problems + [f"{where}: backend {config.backend!r}; the kit's preprocessing runs on python or dali"]
    for warmup in config.model_warmup:  # Triton fails the load on a missing or short file
        for name, tensor in warmup.inputs.items():
            data = model_dir / WARMUP_DIR / tensor.input_data_file
            if not tensor.input_data_file:
                continue
            if not data.is_file():
                problems.append(f"{model_dir.name}/{WARMUP_DIR}/{tensor.input_data_file}: missing (model_warmup "
                                f"{warmup.name!r})")
            elif list(tensor.dims) != [data.stat().st_size]:
                problems.append(f"{where}: model_warmup {warmup.name!r} input {name!r} dims {list(tensor.dims)}, "
                                f"but {WARMUP_DIR}/{tensor.input_data_file} has {data.stat().st_size} bytes")
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        problems.append(f"{model_dir.name}: no numeric version directory")
    for vdir in versions:
        if config.backend == "dali" and (vdir / "model.dali").is_file():
            continue  # a serialized pipeline instead of autoserialization
        problems += [f"{model_dir.name}/{vdir.name}/{name}: missing" for name in files[config.backend]
                     if not (vdir / name).is_file()]
    return problems


def _check_labels(model_dir: Path, out) -> List[str]:
    """An image model output's label_filename, if it has one: there, with one label per class."""
    if not out.label_filename:
        return []
    labels = model_dir / out.label_filename
    if len(out.dims) == 1 and labels.is_file():
        count = len([x for x in labels.read_text().splitlines() if x.strip()])
        return [] if count == out.dims[0] else [
            f"{model_dir.name}/{out.label_filename}: {count} labels, output has {out.dims[0]}"]
    return [f"{model_dir.name}/{out.label_filename}: missing"]


def _check_fused(model_dir: Path, config: model_config_pb2.ModelConfig, where: str) -> List[str]:
    """A fused image model's output (labelled logits) and the classifier whose artifact it runs."""
    out, problems = config.output[0], []
    if len(out.dims) != 1 or out.data_type != model_config_pb2.TYPE_FP32:
        problems.append(f"{where}: output {out.name!r} must be TYPE_FP32 [classes] (the logits)")
    else:
        problems += _check_labels(model_dir, out)
    params = {key: value.string_value for key, value in config.parameters.items()}
    missing = [key for key in ("classifier", "classifier_input", "classifier_input_name", "artifact", "runtime")
               if not params.get(key)]
    if missing:
        return problems + [f"{where}: parameters {', '.join(missing)} missing (the classifier it runs)"]
    for vdir in (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        artifact = model_dir.parent / params["classifier"] / vdir.name / params["artifact"]
        if not artifact.is_file():
            problems.append(f"{where}: classifier {params['classifier']!r} has no {params['artifact']} in version "
                            f"{vdir.name} ({artifact.relative_to(model_dir.parent)}): build it with the image model")
    return problems
