"""weights -> exported, parity-checked, validated Triton model repository (what build_repo.py runs)."""

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tqdm import tqdm

from . import versions
from .ensemble import classifier_for, write_image_models
from .errors import KitError
from .export import ONNX_OPSET, export_onnx, export_program, export_torchscript
from .gate import MIN_AGREEMENT
from .openvino import export_openvino
from .parity import (PARITY_IMAGES, TOLERANCE, check_parity, constant_logits, format_table, parity_pixels,
                     photo_set, rows_as_dicts, run_parity, write_reference)
from .preprocess import normalize
from .render import (TORCH_MODELS, ConfigOptions, PlanOptions, check_config_options, check_plan_options,
                     python_backend, render_config, render_plan_script)
from .repository import file_hashes, sha256, staged_repository, write_manifest
from .spec import (COMPILED_ARTIFACT, ENSEMBLE, LABELS_FILE, LOCAL_MODELS, LOCAL_OPTIONAL, MANIFEST_FILE, MEAN,
                   MODELS, ONNX, OPENVINO_MODELS, OV, OV_U8, PARITY_FILE, PLAN_INFO_FILE, PREPROCESS, PT, STD, TRT, U8,
                   ModelSpec)
from .trt_build import HOW_TO_BUILD, available_builder, build_plan_python, build_plan_trtexec
from .validate import check_repository
from .weights import load_labels, load_model, read_labels

TRT_MODES = ("auto", "skip", "require")
PLAN_SCRIPT = "build_plan.sh"


@dataclass
class BuildOptions:
    arch: str = "large"
    weights: Optional[Path] = None
    labels: Optional[Path] = None
    output: Path = Path("model_repository")
    config: ConfigOptions = field(default_factory=ConfigOptions)
    plan: PlanOptions = field(default_factory=PlanOptions)
    trt: str = "auto"
    parity_images: Optional[Path] = None
    parity_tolerance: float = TOLERANCE
    models: Optional[Tuple[str, ...]] = None  # spec keys (pt, onnx, trt); None: every model of the target
    allow_constant_logits: bool = False
    ensemble: Optional[str] = None  # spec key of the classifier the image ensemble feeds; None: no ensemble
    image_model: str = "ensemble"  # how mobilenetv3_image is served: ensemble | fused (one python model, local)
    openvino_min_agreement: float = MIN_AGREEMENT  # the BF16 accuracy gate's top-1 agreement with FP32 eager


def log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)




def _tensorrt(opts: BuildOptions, staging: Path, models: Sequence[ModelSpec]) -> dict:
    """Build the plan when possible; otherwise say exactly how it gets built. Returns the manifest entry."""
    if opts.config.target == "local":
        return {"status": "not-applicable", "reason": "the embedded Triton has no TensorRT backend"}
    if TRT not in models:
        return {"status": "not-requested", "reason": f"--models leaves {TRT.name} out"}
    (staging / TRT.name / PLAN_SCRIPT).write_text(render_plan_script(opts.plan, opts.config.version))
    (staging / TRT.name / PLAN_SCRIPT).chmod(0o755)
    if opts.trt == "skip":
        return {"status": "skipped", "reason": f"--trt skip; {HOW_TO_BUILD}"}
    builder = available_builder()
    if builder is None:
        reason = "neither the TensorRT Python package nor trtexec is available here"
        if opts.trt == "require":
            raise KitError(f"--trt require: {reason}; {HOW_TO_BUILD}")
        # how to build it: the validation's note on the missing plan, printed once by the CLI's final check
        log(f"TensorRT: skipped ({reason}); the {TRT.name} config is rendered")
        return {"status": "skipped", "reason": f"{reason}; {HOW_TO_BUILD}"}
    vdir = staging / TRT.name / str(opts.config.version)
    if builder == "python":
        info = build_plan_python(staging / ONNX.name / str(opts.config.version) / ONNX.artifact,
                                 vdir / TRT.artifact, opts.plan)
        (vdir / PLAN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    else:
        info = build_plan_trtexec(staging / TRT.name / PLAN_SCRIPT, vdir / PLAN_INFO_FILE)
    return {"status": "built", "plan_info": info}


def build(opts: BuildOptions) -> Path:
    """Run every step into a staging directory, validate it, then swap it in place of ``opts.output``."""
    started = time.time()
    cfg = opts.config
    if not 0 < opts.openvino_min_agreement <= 1:
        raise KitError(f"--openvino-min-agreement must lie in (0, 1], got {opts.openvino_min_agreement}")
    if opts.trt not in TRT_MODES:
        raise KitError(f"--trt must be one of {', '.join(TRT_MODES)}")
    check_config_options(cfg)
    models = select_models(cfg, opts.models)
    image_classifier = _image_classifier(opts, models)
    kept = {spec.name: kept_versions(opts.output, spec, cfg) for spec in models}
    check_plan_options(opts.plan, cfg.max_batch_size if TRT in models and opts.trt != "skip" else None)
    steps = iter(enumerate(["load weights", "export TorchScript", "export ONNX", "parity gate", "TensorRT",
                            "render configs", "validate", "swap in"], 1))
    bar = tqdm(total=8, unit="step", file=sys.stderr, dynamic_ncols=True, disable=None,  # None: off unless a TTY
               bar_format="{desc:<18} {n_fmt}/{total_fmt} steps |{bar:20}| {elapsed}")

    def step() -> None:
        number, name = next(steps)
        bar.set_description(name)
        bar.update(1)
        if bar.disable:  # logs (CI, pipes) still get one line per step
            log(f"[{number}/8] {name}")

    with bar, staged_repository(opts.output) as staging:
        step()
        model, trained = load_model(opts.arch, opts.weights, _random_init_classes(opts))
        labels = load_labels(opts.labels, model.num_classes)
        if trained and opts.labels is None:
            log(f"WARNING: --weights without --labels: the classes are labelled class_0..class_{model.num_classes - 1}"
                f"; pass --labels with train.py's class_indices.json or a labels.txt (one name per line)")
        if not trained:
            log("WARNING: no --weights given: the model has a seeded RANDOM init and its predictions are "
                "MEANINGLESS. Use this only to try the serving path; pass --weights to deploy a real model.")
        cfg = ConfigOptions(**{**cfg.__dict__, "num_classes": model.num_classes})
        version = str(cfg.version)
        for spec in {PT, ONNX, *models}:  # both exports always run: the parity gate needs them
            (staging / spec.name / version).mkdir(parents=True)
            (staging / spec.name / LABELS_FILE).write_text("\n".join(labels) + "\n")
        pt_path = staging / PT.name / version / PT.artifact
        onnx_path = staging / ONNX.name / version / ONNX.artifact
        compiled = cfg.runtime == "compiled"
        program_path = staging / PT.name / version / COMPILED_ARTIFACT if compiled else None

        step()
        export_torchscript(model, pt_path)
        if compiled:
            export_program(model, program_path, cfg.max_batch_size)
        step()
        export_onnx(model, onnx_path)
        ov_paths = [export_openvino(onnx_path, staging / spec.name / version, spec)
                    for spec in OPENVINO_MODELS if spec in models]

        step()
        paths = photo_set(opts.parity_images, "--parity-images")
        pixels = parity_pixels(paths, max(cfg.max_batch_size, PARITY_IMAGES))
        batch = normalize(pixels)
        rows = run_parity(model, pt_path, onnx_path, pixels, sorted({1, cfg.max_batch_size}), program_path, ov_paths)
        log("parity vs eager PyTorch:\n" + format_table(rows, opts.parity_tolerance))
        check_parity(rows, opts.parity_tolerance)
        openvino_entry = _openvino_gate(model, ov_paths, cfg, paths, opts.openvino_min_agreement) if ov_paths else None
        gpu_images = image_classifier is not None and cfg.target == "local" and cfg.instances.kind == "KIND_GPU"
        decode_entry = _gpu_decode(model, cfg, paths) if gpu_images else None
        constant = constant_logits(model, batch, opts.parity_tolerance)
        if constant and not opts.allow_constant_logits:
            raise KitError(f"{constant}; --allow-constant-logits builds it anyway; nothing was written")
        if constant:
            log(f"WARNING: {constant}")
        device_check = None
        for spec in (s for s in models if s in TORCH_MODELS):
            vdir = staging / spec.name / version
            if spec == U8:  # the same model behind the UINT8 contract
                shutil.copyfile(program_path or pt_path, vdir / (COMPILED_ARTIFACT if compiled else U8.artifact))
            if python_backend(spec, cfg):
                write_reference(model, pixels[:PARITY_IMAGES], vdir / PARITY_FILE)
        if compiled:
            pt_path.unlink()
            device_check = _check_on_gpu(cfg, models, staging, version)
        for spec in {PT, ONNX} - set(models):
            shutil.rmtree(staging / spec.name)

        step()
        trt_entry = _tensorrt(opts, staging, models)

        step()
        from .backend import PYTHON_MODEL, install_python_model

        for spec in models:
            (staging / spec.name / "config.pbtxt").write_text(render_config(spec, cfg))
            if python_backend(spec, cfg):
                install_python_model(PYTHON_MODEL, staging / spec.name / version)
            for old in kept[spec.name]:
                shutil.copytree(Path(opts.output) / spec.name / str(old), staging / spec.name / str(old))
        if image_classifier is not None:
            write_image_models(staging, image_classifier, cfg, labels, decode_entry, opts.image_model)
        manifest = {
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "target": cfg.target, "arch": opts.arch, "num_classes": model.num_classes, "labels": labels,
            "max_batch_size": cfg.max_batch_size, "version": cfg.version,
            "kept_versions": {name: kept_ for name, kept_ in kept.items() if kept_},
            "models": [spec.name for spec in models] + (
                ([ENSEMBLE] if opts.image_model == "fused" else [PREPROCESS, ENSEMBLE]) if image_classifier else []),
            "ensemble": {"name": ENSEMBLE, "classifier": image_classifier.name, "kind": opts.image_model}
            if image_classifier else None,
            "weights": {"path": str(opts.weights), "sha256": sha256(opts.weights)} if trained
            else {"path": None, "random_init": True},
            "versions": {**versions("torch", "onnx", "onnxruntime", "onnxsim", "tensorrt"), "onnx_opset": ONNX_OPSET},
            "tensorrt": trt_entry,
            "parity": {"tolerance": opts.parity_tolerance, "rows": rows_as_dicts(rows), "device": device_check},
            "runtime": cfg.runtime,
            "openvino": openvino_entry,
            "gpu_decode": decode_entry,
        }

        step()
        manifest["files"] = file_hashes(staging)
        manifest["build_seconds"] = round(time.time() - started, 1)
        write_manifest(staging, manifest)
        report = check_repository(staging)  # its notes are the CLI's final check's too: printed there, once
        if not report.ok:
            raise KitError("the built repository failed validation, previous one kept: " + "; ".join(report.problems))
        step()
        bar.set_description("done")
    log(f"wrote {opts.output} ({', '.join(manifest['models'])}) in {time.time() - started:.1f}s")
    return Path(opts.output)


def _check_on_gpu(cfg: ConfigOptions, models: Sequence[ModelSpec], staging: Path, version: str) -> Optional[dict]:
    """Compile the program for the serving GPU now, when this machine has it: the parity check at load, run at
    build time, fails the build instead of the deployment and leaves TorchInductor's cache warm for the server."""
    import torch

    from .backend.classifier_model import RunnerError, TorchRunner

    if cfg.instances.kind != "KIND_GPU" or not torch.cuda.is_available():
        log(f"--runtime compiled: no CUDA device here, so TorchInductor compiles the program and checks it against "
            f"{PARITY_FILE} when the server loads it on its GPU (the model does not load if the check fails)")
        return None
    spec = PT if PT in models else U8
    vdir = staging / spec.name / version
    started = time.time()
    try:
        runner = TorchRunner(str(vdir / COMPILED_ARTIFACT), "cuda:0", cfg.gpu.precision, cfg.gpu.channels_last,
                             cfg.gpu.cuda_graph_batches, MEAN, STD, spec == U8, cfg.gpu.compile_cache)
        summary = runner.check_parity(vdir / PARITY_FILE, cfg.gpu.parity_tolerance)
    except RunnerError as exc:
        raise KitError(f"{spec.name}: {exc}") from None
    seconds = round(time.time() - started, 1)
    log(f"{spec.name}: compiled for {torch.cuda.get_device_name(0)} in {seconds}s; {summary}")
    return {"gpu": torch.cuda.get_device_name(0), "compile_seconds": seconds, "summary": summary,
            "tolerance": cfg.gpu.parity_tolerance}


def kept_versions(output: Path, spec: ModelSpec, cfg: ConfigOptions) -> List[int]:
    """Versions of ``spec`` in the kit-built repository being replaced that the version policy serves beside the
    one this build writes: they are carried over (a build writes one version, --model-version). Under latest[:N]
    only older ones: a version above the new one would be served instead of it."""
    folder = Path(output) / spec.name
    old = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and
                 int(p.name) != cfg.version) if (Path(output) / MANIFEST_FILE).is_file() and folder.is_dir() else []
    policy = cfg.version_policy
    if policy.kind == "specific":
        missing = sorted(set(policy.versions) - {cfg.version} - set(old))
        if missing:
            raise KitError(f"--version-policy specific:{','.join(map(str, policy.versions))}: {spec.name} would have "
                           f"no version {', '.join(map(str, missing))}; a build writes --model-version "
                           f"({cfg.version}) and keeps the served versions of the repository it replaces ({output})")
        return [v for v in old if v in policy.versions]
    if policy.kind == "all":
        return old
    return [v for v in old if v < cfg.version][-(policy.num_versions - 1):] if policy.num_versions > 1 else []


def _gpu_decode(model, cfg: ConfigOptions, photos: List[Path]) -> dict:
    """Whether the image ensemble's GPU instances decode JPEGs on their GPU: --gpu-decode on / off as said; gated
    (default) only when the accuracy gate, run here on this machine's GPU, passes. ``use``: "on" or "off"."""
    if cfg.gpu.decode != "gated":
        return {"use": cfg.gpu.decode, "reason": f"--gpu-decode {cfg.gpu.decode}"}
    import numpy as np
    import torch

    from .backend.preprocess_model import Preprocessor
    from .gate import decode_gate, photo_views

    if not torch.cuda.is_available():
        return {"use": "off", "reason": "not gated: no CUDA device on the build machine (build on the GPU host, or "
                                        "--gpu-decode on)"}
    preprocess = Preprocessor(True, device="cuda:0", log=lambda message: None, warn=lambda message: None)
    if preprocess.gpu is None:
        return {"use": "off", "reason": "no GPU JPEG decoder: pip install nvidia-nvimgcodec-cu12 (or -cu13)"}
    model = model.eval().to("cuda:0")

    def pixels(datas):
        items = [x for i in range(0, len(datas), 64) for x in preprocess(datas[i:i + 64])]
        return np.stack([x.cpu().numpy() if hasattr(x, "cpu") else x for x in items])

    def classify(batch):
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(normalize(batch[i:i + 64])).to("cuda:0")).cpu().numpy()
                                   for i in range(0, len(batch), 64)])

    gate = decode_gate(f"GPU decode ({preprocess.gpu.name})", photo_views(photos), pixels, classify)
    model.to("cpu")
    preprocess.close()
    log(f"accuracy gate: {gate.line()}")
    if not gate.ok:
        log("WARNING: the image ensemble's GPU instances will decode with Pillow on the CPU (the GPU decode changes "
            f"the class of {100 * (1 - gate.top1_agreement):.2f} % of the photo views)")
    return {"use": "on" if gate.ok else "off", "reason": "accuracy gate " + ("passed" if gate.ok else "failed"),
            "gate": gate.as_dict()}


def _openvino_gate(model, xmls: List[Path], cfg: ConfigOptions, photos: List[Path], min_agreement: float) -> dict:
    """The OpenVINO models' precision, and the accuracy gate's verdict on BF16 where they may run in BF16: asked for
    (--openvino-precision bf16), or on the ngc target, whose OpenVINO backend computes in BF16 on any CPU that has
    it (it takes no FP32 switch). BF16 below the gate refuses the build; nothing is written."""
    import numpy as np
    import torch

    from .backend.classifier_model import OpenVinoRunner
    from .gate import compare, photo_views, pillow_pixels
    from .openvino import bf16_supported

    entry = {"version": versions("openvino")["openvino"], "precision": cfg.openvino_precision}
    may_be_bf16 = cfg.openvino_precision == "bf16" or cfg.target == "ngc"
    if not may_be_bf16:
        return entry
    if not bf16_supported():
        if cfg.openvino_precision == "bf16":
            raise KitError("--openvino-precision bf16: this CPU has no BF16 (OpenVINO lists neither AVX512_BF16 nor "
                           "AMX), so it can be neither gated nor served here; build with --openvino-precision fp32")
        return {**entry, "gate": "not run: this CPU has no BF16; Triton's OpenVINO backend runs BF16 on CPUs that "
                                 "have it, so build on one to gate it"}
    pixels = pillow_pixels(photo_views(photos))
    images = normalize(pixels)
    with torch.no_grad():
        reference = np.concatenate([model.eval()(torch.from_numpy(images[i:i + 64])).numpy()
                                    for i in range(0, len(images), 64)])
    gates = []
    for xml in xmls:
        runner = OpenVinoRunner(str(xml), "bf16")
        uint8 = runner.input_dtype == np.uint8  # an IR that normalizes (in BF16 too): given the pixels
        inputs = pixels if uint8 else images
        candidate = np.concatenate([runner(inputs[i:i + cfg.max_batch_size])
                                    for i in range(0, len(inputs), cfg.max_batch_size)])
        gate = compare("OpenVINO BF16" + (" (UINT8 input)" if uint8 else ""), "FP32 eager", reference, candidate,
                       min_agreement)
        log(f"accuracy gate: {gate.line()}")
        if not gate.ok:
            raise KitError(f"OpenVINO BF16 refused by the accuracy gate (its class changes for "
                           f"{100 * (1 - gate.top1_agreement):.2f} % of the images): {gate.line()}"
                           + ("; build with --openvino-precision fp32" if cfg.target == "local" else
                              "; Triton's OpenVINO backend would compute in BF16 on such CPUs: serve "
                              "mobilenetv3_onnx there instead") + "; nothing was written")
        gates.append(gate)
    return {**entry, "gate": min(gates, key=lambda g: g.top1_agreement).as_dict()}  # the least agreeing IR's


def select_models(cfg: ConfigOptions, keys: Optional[Sequence[str]]) -> List[ModelSpec]:
    target = cfg.target
    if target == "local":
        default, available = LOCAL_MODELS, (*LOCAL_MODELS, *LOCAL_OPTIONAL)
    else:  # the UINT8 model needs the python backend: offered with --runtime compiled
        default, available = MODELS, (*MODELS, U8, OV, OV_U8) if cfg.runtime == "compiled" else (*MODELS, OV, OV_U8)
    if keys is None:
        return list(default)
    known = {spec.key: spec for spec in available}
    unknown = [k for k in keys if k not in known]
    if unknown or not keys:
        raise KitError(f"--models {','.join(keys)}: the {target} target offers {', '.join(known)}")
    if TRT.key in keys and ONNX.key not in keys:
        raise KitError(f"--models: {TRT.name} is built from {ONNX.name}'s model.onnx, so include onnx too")
    return [spec for spec in available if spec.key in keys]


def _image_classifier(opts: BuildOptions, models: List[ModelSpec]) -> Optional[ModelSpec]:
    """The classifier --ensemble names, added to the default model set if missing; None without --ensemble."""
    if opts.ensemble is None:
        return None
    classifier = classifier_for(opts.ensemble, opts.config.target, opts.image_model)
    if classifier not in models:
        if opts.models is not None:
            raise KitError(f"--ensemble {opts.ensemble} feeds {classifier.name}: add {classifier.key} to --models")
        models.append(classifier)
    return classifier


def _random_init_classes(opts: BuildOptions) -> int:
    """Class count for a random-init model: from the labels file when one is given, else the original project's 5 flowers."""
    return len(read_labels(opts.labels)) if opts.labels is not None else 5


def built_config(source: Path) -> Tuple[dict, ConfigOptions]:
    """A --target local repository's manifest and the config options its configs are rendered anew with: the kit's
    defaults plus what the build fixed (classes, version, the parity tolerance checked at load)."""
    from .repository import read_manifest

    manifest = read_manifest(Path(source))
    if manifest.get("target") != "local":
        raise KitError(f"{source} was built for --target {manifest.get('target')}: the embedded Triton runs "
                       f"--target local repositories")
    return manifest, ConfigOptions(target="local", num_classes=manifest["num_classes"], version=manifest["version"],
                                   cpu_parity_tolerance=manifest["parity"]["tolerance"],
                                   runtime=manifest.get("runtime", "torchscript"))


def render_model(source: Path, dest: Path, spec: ModelSpec, cfg: ConfigOptions) -> None:
    """``spec``'s model directory of the built repository ``source`` in ``dest`` (artifacts copied as built, once)
    with its config.pbtxt rendered for ``cfg``."""
    if not (dest / spec.name).is_dir():
        if not (Path(source) / spec.name).is_dir():
            raise KitError(f"{source} has no {spec.name}: build it with --models including {spec.key}")
        shutil.copytree(Path(source) / spec.name, dest / spec.name,
                        ignore=shutil.ignore_patterns("config.pbtxt", "__pycache__"))
    (dest / spec.name / "config.pbtxt").write_text(render_config(spec, cfg))


def rerender(source: Path, output: Path, spec: ModelSpec, cfg: ConfigOptions, note: dict) -> Path:
    """A repository of ``spec`` alone from ``source``'s artifacts with its config rendered for ``cfg``; validated and
    swapped in place of ``output`` like a build (a failure keeps the previous one). ``note`` goes into the manifest
    (what chose ``cfg``)."""
    manifest, _ = built_config(source)
    with staged_repository(output) as staging:
        render_model(source, staging, spec, cfg)
        manifest = {**manifest, "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "models": [spec.name], "max_batch_size": cfg.max_batch_size, "ensemble": None,
                    "kept_versions": {}, "rendered_from": str(Path(source).resolve()), **note}
        manifest["files"] = file_hashes(staging)
        write_manifest(staging, manifest)
        report = check_repository(staging)
        if not report.ok:
            raise KitError(f"the repository for {output} failed validation, previous one kept: "
                           + "; ".join(report.problems))
    return Path(output)
