"""Kubernetes manifests for a built repository: the Helm chart in deploy/helm rendered offline, then validated.

Rendering is `helm template` (the real Helm binary, scripts/install_helm.sh); the values the repository decides come
from its manifest. Validation needs no cluster: built-in kinds against the Kubernetes OpenAPI schemas bundled in
`kubernetes-validate` (strict: unknown fields are errors), custom resources (KServe InferenceService, ServiceMonitor,
PodMonitor) against the openAPIV3Schema of their published CRDs, vendored in deploy/schemas with their source.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import jsonschema
import kubernetes_validate
import yaml

from .errors import KitError
from .repository import read_manifest
from .spec import TRT

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "mnv3kit-triton"
SCHEMAS = ROOT / "deploy" / "schemas"
# The chart's oldest supported Kubernetes (Chart.yaml kubeVersion) and the newest schema kubernetes-validate has.
KUBE_VERSIONS = ("1.26", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
HOW_TO_GET_HELM = "run `bash scripts/install_helm.sh` (make venv does): it puts helm into the venv's bin"


def helm_binary() -> str:
    beside_python = Path(sys.executable).parent / "helm"
    found = str(beside_python) if beside_python.is_file() else shutil.which("helm")
    if not found:
        raise KitError(f"helm not found: {HOW_TO_GET_HELM}")
    return found


def repository_values(repo: Path, kserve: bool = False) -> dict:
    """Chart values that follow from how the repository was built (build_repo.py's manifest)."""
    manifest = read_manifest(repo)
    if manifest.get("target") != "ngc":
        raise KitError(f"{repo} was built with --target {manifest.get('target')}: the chart runs NVIDIA's Triton "
                       f"image, which serves --target ngc repositories (native backends)")
    has_trt = TRT.name in manifest.get("models", [])
    if not kserve:
        return {"tensorrt": {"buildPlan": has_trt}}  # built in the pod, for its GPU
    plan = repo / TRT.name / str(manifest.get("version", 1)) / TRT.artifact
    if has_trt and not plan.is_file():
        raise KitError(f"{plan} is missing and KServe cannot build it in the pod: build it with the serving image "
                       f"first (docker compose run trt-build, or docker-compose run trt-build) or build the "
                       f"repository with --models pt,onnx")
    return {"mode": "kserve", "tensorrt": {"buildPlan": False}}


def render(values: Sequence[dict] = (), value_files: Sequence[Path] = (), sets: Sequence[str] = (),
           release: str = "mnv3kit-triton", namespace: str = "default") -> List[dict]:
    """`helm template`: ``values`` first, then the files, then ``sets`` (later wins); returns the documents."""
    if not CHART.is_dir():  # the chart and schemas are files of the checkout, not of the installed package
        raise KitError(f"the Helm chart is not at {CHART}: run mnv3-deploy (deploy.py) from the kit's checkout, "
                       f"or `helm template` the chart in deploy/helm/mnv3kit-triton yourself")
    cmd = [helm_binary(), "template", release, str(CHART), "--namespace", namespace]
    with tempfile.TemporaryDirectory(prefix="mnv3kit-values-") as tmp:
        for i, v in enumerate(values):
            path = Path(tmp) / f"{i}.yaml"
            path.write_text(yaml.safe_dump(v))
            cmd += ["-f", str(path)]
        for f in value_files:
            cmd += ["-f", str(f)]
        for s in sets:
            cmd += ["--set", s]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines()
                 if line.strip() and not line.startswith("Use --debug")]
        raise KitError("helm template failed: " + " ".join(lines))
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _crd_schemas() -> Dict[Tuple[str, str], dict]:
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        crd = json.loads(path.read_text())
        schemas[(crd["apiVersion"], crd["kind"])] = crd
    return schemas


def unknown_fields(obj, schema: dict, path: str = "") -> Iterator[str]:
    """Fields a structural CRD schema does not declare: the API server's strict field validation rejects them."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                yield from unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None and not extra:
                yield f"{path}.{key}"
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def validate(docs: Sequence[dict], kube_versions: Sequence[str] = KUBE_VERSIONS) -> List[str]:
    """One line per problem, naming the document (kind/name) and the field; empty when all are valid."""
    crds = _crd_schemas()
    problems = []
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        crd = crds.get((doc.get("apiVersion"), doc.get("kind")))
        if crd is not None:
            schema = crd["openAPIV3Schema"]
            for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
                where = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{what}: {where}: {error.message} ({crd['source']['repository']} "
                                f"{crd['source']['tag']} CRD)")
            problems += [f"{what}: unknown field {field[1:]}" for field in unknown_fields(doc, schema)]
            continue
        for version in kube_versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{what}: {doc.get('apiVersion')} {doc.get('kind')} does not exist in "
                                f"Kubernetes {version}")
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.absolute_path)
                problems.append(f"{what}: {where}: {exc.message} (Kubernetes {version})")
    return problems


def render_for_repository(repo: Optional[Path], value_files: Sequence[Path] = (), sets: Sequence[str] = (),
                          kserve: bool = False, release: str = "mnv3kit-triton",
                          namespace: str = "default") -> List[dict]:
    if repo is not None:
        values = [repository_values(repo, kserve)]
    else:
        values = [{"mode": "kserve"}] if kserve else []
    return render(values, value_files, sets, release, namespace)


def to_yaml(docs: Sequence[dict]) -> str:
    return "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in docs)
