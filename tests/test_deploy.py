"""The Helm chart (deploy/helm) rendered by the real helm, every manifest validated offline, its Triton flags run."""

import copy
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, assert_one_line_error, run_cli
from mnv3kit.build import BuildOptions, build
from mnv3kit.errors import KitError
from mnv3kit.render import ConfigOptions
from mnv3kit.repository import read_manifest

try:
    from mnv3kit.deploy import CHART, helm_binary, render, repository_values, validate
    helm_binary()
    HELM = True
except KitError:
    HELM = False
pytestmark = pytest.mark.skipif(not HELM, reason="helm missing: `make venv` installs it (scripts/install_helm.sh)")

KEY = {"triton": {"restrictedApi": {"key": "s3cret-key"}}}
ADAPTER = yaml.safe_load((ROOT / "deploy" / "helm" / "prometheus-adapter-values.yaml").read_text())


def by_kind(docs):
    out = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def one(docs, kind):
    (doc,) = by_kind(docs)[kind]
    return doc


def triton_container(docs):
    return next(c for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")


def test_default_chart_renders_valid_manifests_with_the_kits_serving_contract():
    lint = subprocess.run([helm_binary(), "lint", "--strict", str(CHART), "--set", "triton.restrictedApi.key=k"],
                          capture_output=True, text=True)
    assert lint.returncode == 0 and "0 chart(s) failed" in lint.stdout, lint.stdout + lint.stderr
    docs = render([KEY])
    assert validate(docs) == []
    kinds = by_kind(docs)
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Service",
                             "ServiceMonitor"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    triton = triton_container(docs)
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51.0, as docker-compose.yml
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["resources"]["requests"]["cpu"] and triton["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert triton["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in triton["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/dev/shm"}
    # the key reaches Triton from the Secret, never as a literal in the pod spec
    secret = one(docs, "Secret")
    key_env = next(e for e in triton["env"] if e["name"] == "TRITON_API_KEY")["valueFrom"]["secretKeyRef"]
    assert key_env["name"] == secret["metadata"]["name"] and key_env["key"] in secret["stringData"]
    assert "s3cret-key" not in yaml.safe_dump(one(docs, "Deployment"))
    restricted = [a for a in triton["args"] if "restricted" in a]
    assert len(restricted) == 2 and all(a.endswith(":admin-key=$(TRITON_API_KEY)") for a in restricted)
    # the TensorRT plan is built in the pod, on its GPU, from a copy of the read-only claim
    init = {c["name"]: c for c in pod["initContainers"]}
    assert list(init) == ["copy-repository", "trt-build"]
    assert "mobilenetv3_trt/build_plan.sh" in init["trt-build"]["command"][-1]
    assert init["trt-build"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    # services: HTTP, gRPC, metrics; the monitor scrapes the metrics port of the main Service only
    main, headless = sorted(kinds["Service"], key=lambda s: s["metadata"]["name"])
    assert {p["name"]: p["port"] for p in main["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert headless["spec"]["clusterIP"] == "None"
    monitor = one(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= main["metadata"]["labels"].items()
    assert not selector.items() <= headless["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_hpa_reads_the_metric_the_shipped_adapter_rule_serves():
    docs = render([KEY])
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    (rule,) = ADAPTER["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.search(rule["name"]["matches"], "nv_inference_queue_duration_us")
    for counter in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert f"rate({counter}{{<<.LabelMatchers>>}}" in rule["metricsQuery"]
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the HPA owns it


@pytest.mark.parametrize("values", [
    {"modelRepository": {"source": "pvc", "pvc": {"subPath": "mnv3"}}, "tensorrt": {"buildPlan": False}},
    {"modelRepository": {"source": "url", "url": "s3://bucket/models", "credentialsSecret": "s3-creds"},
     "tensorrt": {"buildPlan": False}},
    {"modelRepository": {"source": "image", "image": {"repository": "registry.example/mnv3-repo", "tag": "1"}}},
    {"autoscaling": {"enabled": False}, "replicaCount": 3, "metrics": {"serviceMonitor": {"enabled": False},
                                                                     "podMonitor": {"enabled": True}}},
    {"triton": {"restrictedApi": {"enabled": False}}, "service": {"headlessGrpc": False},
     "podDisruptionBudget": {"enabled": False}},
    {"mode": "kserve", "tensorrt": {"buildPlan": False}},
    {"mode": "kserve", "modelRepository": {"source": "url", "url": "gs://bucket/models"},
     "tensorrt": {"buildPlan": False}, "kserve": {"deploymentMode": "Serverless"}},
], ids=["pvc-subpath", "url", "image", "podmonitor-fixed-replicas", "open-apis", "kserve-pvc", "kserve-url"])
def test_every_source_and_mode_renders_valid_manifests(values):
    docs = render([KEY, values])
    assert validate(docs) == []
    kinds = by_kind(docs)
    if values.get("mode") == "kserve":
        isvc = one(docs, "InferenceService")
        model = isvc["spec"]["predictor"]["model"]
        assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
        url = values["modelRepository"]["url"] if "modelRepository" in values else "pvc://mnv3kit-model-repository"
        assert model["storageUri"] == url
        assert "Deployment" not in kinds
        return
    triton = triton_container(docs)
    repo_arg = next(a for a in triton["args"] if a.startswith("--model-repository="))
    source = values.get("modelRepository", {}).get("source", "pvc")
    assert repo_arg == ("--model-repository=s3://bucket/models" if source == "url" else "--model-repository=/models")
    if "autoscaling" in values:
        assert one(docs, "Deployment")["spec"]["replicas"] == 3 and "HorizontalPodAutoscaler" not in kinds
        assert "PodMonitor" in kinds and "ServiceMonitor" not in kinds
    if values.get("triton", {}).get("restrictedApi", {}).get("enabled") is False:
        assert not any("restricted" in a for a in triton["args"]) and "Secret" not in kinds


@pytest.mark.parametrize("values, message", [
    ({"modelRepository": {"source": "ftp"}}, "value must be one of 'pvc', 'url', 'image'"),
    ({"triton": {"restrictedApi": {"apis": ["model-repository", "everything"]}}}, "restrictedApi/apis/1"),
    ({"ports": {"grpc": 80801}}, "ports/grpc"),
    ({"resources": {"limits": {"memory": "lots"}}}, "resources/limits/memory"),
    ({"triton": {"restrictedApi": {"key": ""}}}, "restricted APIs need a key"),
    ({"modelRepository": {"source": "url", "url": "ftp://host/models"}}, "must be s3://, gs:// or as://"),
    ({"modelRepository": {"source": "url", "url": "s3://b/m"}}, "tensorrt.buildPlan needs a copy"),
    ({"mode": "kserve"}, "mode kserve cannot build the TensorRT plan"),
    ({"replicaCount": "two"}, "replicaCount"),
])
def test_broken_values_are_refused_before_anything_renders(values, message):
    with pytest.raises(KitError, match=re.escape(message)):
        render([KEY, values])


def test_validation_catches_what_the_values_schema_lets_through():
    # free-form pass-through values reach the Kubernetes schema: a user name instead of a uid
    docs = render([KEY, {"podSecurityContext": {"runAsUser": "triton-server"}}])
    problems = validate(docs)
    assert problems and all("Deployment/" in p and "runAsUser" in p for p in problems)
    # and broken custom resources are caught by their CRD schemas (types, enums, unknown fields)
    isvc = one(render([KEY, {"mode": "kserve", "tensorrt": {"buildPlan": False}}]), "InferenceService")
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"].pop("storageUri")
    assert validate([bad]) == [f"InferenceService/{isvc['metadata']['name']}: unknown field "
                               f"spec.predictor.model.storageURI"]
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["scaleMetric"] = "gpu"
    assert "is not one of ['cpu', 'memory', 'concurrency', 'rps']" in validate([bad])[0]
    monitor = one(render([KEY]), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["port"] = 8002
    assert "8002 is not of type 'string'" in validate([monitor])[0]
    hpa = one(render([KEY]), "HorizontalPodAutoscaler")
    hpa["apiVersion"] = "autoscaling/v2beta2"  # removed in Kubernetes 1.26
    assert "does not exist in Kubernetes 1.26" in validate([hpa])[0]


def test_chart_runs_the_flags_of_the_compose_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    chart_args = triton_container(render([KEY]))["args"]
    chart_flags = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in chart_args}
    for flag in compose["command"][1:]:
        name, _, value = flag.partition("=")
        assert name in chart_flags, f"compose passes {name}, the chart does not"
        if "restricted" not in name:
            assert chart_flags[name] == value, name


def test_deploy_cli_reads_the_repository(built_repo, tmp_path):
    out = tmp_path / "triton.yaml"
    proc = run_cli("deploy.py", "--repo", built_repo("small", "ngc"), "--set", "triton.restrictedApi.key=k",
                   "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "valid for Kubernetes 1.26 and" in proc.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    init = one(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["copy-repository", "trt-build"]  # the repository has mobilenetv3_trt
    assert repository_values(built_repo("small", "ngc")) == {"tensorrt": {"buildPlan": True}}
    assert_one_line_error(run_cli("deploy.py", "--repo", built_repo("small", "local")), "--target local")
    assert_one_line_error(run_cli("deploy.py", "--repo", built_repo("small", "ngc")), "restricted APIs need a key")
    assert_one_line_error(run_cli("deploy.py", "--repo", built_repo("small", "ngc"), "--kserve"),
                          "model.plan is missing and KServe cannot build it in the pod")
    # a repository without the TensorRT model is what KServe can serve as it is
    no_trt = tmp_path / "model_repository"
    build(BuildOptions(arch="small", output=no_trt, models=("pt", "onnx"), config=ConfigOptions(target="ngc")))
    assert read_manifest(no_trt)["tensorrt"]["status"] == "not-requested"
    proc = run_cli("deploy.py", "--repo", no_trt, "--kserve", "--set", "triton.restrictedApi.existingSecret=key",
                   "-o", out)
    assert proc.returncode == 0, proc.stderr
    isvc = one(yaml.safe_load_all(out.read_text()), "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "pvc://mnv3kit-model-repository"
    assert_one_line_error(run_cli("deploy.py", "-f", tmp_path / "missing.yaml"), "does not exist")


def _get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {},
                                                           data=b"{}" if "index" in url else None)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_chart_flags_run_on_the_real_tritonserver(built_repo):
    """Triton 2.51 accepts the chart's flags; the restricted APIs need the key, probes and inference do not."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from mnv3kit.server import LocalTriton, Ports
    from mnv3kit.spec import PT

    docs = render([KEY])
    key = one(docs, "Secret")["stringData"]["api-key"]
    args = [a.replace("$(TRITON_API_KEY)", key) for a in triton_container(docs)["args"]]
    # the embedded server sets these itself (and explicit model control for its watchdog): the chart's must match
    own = LocalTriton(built_repo("small", "local"), Ports.free(), admin_key=key)
    own_flags = dict(a.split("=", 1) for a in own.command(Path("/")) if a.startswith("--") and "=" in a)
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol", "--strict-readiness", "--exit-on-error",
                 "--exit-timeout-secs"):
        assert f"{flag}={own_flags[flag]}" in args, flag
    args = [a for a in args if not a.startswith(("--model-repository=", "--http-port=", "--grpc-port=",
                                                  "--metrics-port=", "--model-control-mode=", *own_flags))]
    own.close()
    with LocalTriton(built_repo("small", "local"), Ports.free(), extra_args=args, admin_key=key) as server:
        base = f"http://{server.http_url}"
        for probe in ("livenessProbe", "readinessProbe"):
            path = triton_container(docs)[probe]["httpGet"]["path"]
            assert _get(base + path)[0] == 200
        status, body = _get(base + "/v2/repository/index")
        assert status == 403 and "admin-key" in body
        assert _get(base + "/v2/repository/index", {"admin-key": "wrong"})[0] == 403
        assert _get(base + "/v2/repository/index", {"admin-key": key})[0] == 200
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(Exception, match="restricted"):
            client.get_inference_statistics()
        assert client.get_inference_statistics(headers={"triton-grpc-protocol-admin-key": key})
        image = grpcclient.InferInput(PT.input_name, [1, 3, 224, 224], "FP32")
        image.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
        assert client.infer(PT.name, [image]).as_numpy(PT.output_name).shape == (1, 5)  # inference stays open
        status, metrics = _get(f"http://localhost:{server.ports.metrics}/metrics")
    # the counters the adapter rule divides exist, per model, once a request was served
    for counter in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert re.search(rf'^{counter}{{model="{PT.name}",version="1"}} [1-9]', metrics, re.M), counter


def test_install_helm_script_installs_the_pinned_binary(tmp_path):
    installed = Path(sys.executable).parent / "helm"
    if not installed.is_file():
        pytest.skip("helm comes from PATH here, not from scripts/install_helm.sh")
    dest = tmp_path / "bin"
    dest.mkdir()
    shutil.copy2(installed, dest / "helm")  # already the pinned binary: the script keeps it without downloading
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_helm.sh"), str(dest)],
                                        capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    (dest / "helm").write_bytes(b"#!/bin/sh\necho not helm\n")
    (dest / "helm").chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_helm.sh"), str(dest)],
                                        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin",
                                                                             "PIP": f"{sys.executable} -m pip"})
    assert proc.returncode == 0, proc.stderr
    assert "installed v4.1.4" in proc.stdout and (dest / "helm").read_bytes() == installed.read_bytes()


def test_round_robin_grpc_channel_spreads_requests_over_servers(built_repo):
    """What the headless Service is for: one gRPC client, a round_robin channel, every server gets requests."""
    import json

    import numpy as np
    import tritonclient.grpc as grpcclient

    from mnv3kit.server import LocalTriton, Ports
    from mnv3kit.spec import PT

    def served(server):
        status, body = _get(f"http://{server.http_url}/v2/models/{PT.name}/stats", server.headers("http"))
        assert status == 200, body
        return json.loads(body)["model_stats"][0]["inference_stats"]["success"]["count"]

    image = grpcclient.InferInput(PT.input_name, [1, 3, 224, 224], "FP32")
    image.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
    repo = built_repo("small", "local")
    with LocalTriton(repo, Ports.free()) as a, LocalTriton(repo, Ports.free()) as b:
        target = f"ipv4:127.0.0.1:{a.ports.grpc},127.0.0.1:{b.ports.grpc}"  # two addresses, as DNS gives per pod
        for options, spread in ((None, False), ([("grpc.lb_policy_name", "round_robin")], True)):
            before = served(a), served(b)
            client = grpcclient.InferenceServerClient(target, channel_args=options)
            client.is_server_ready()  # starts connecting the channel's subchannels
            time.sleep(2)  # round_robin picks among READY subchannels only: let the second one connect too
            for _ in range(8):
                client.infer(PT.name, [image])
            client.close()
            deadline = time.monotonic() + 10
            while True:  # Triton counts a request once its response is sent: the last one may lag the answer
                counts = served(a) - before[0], served(b) - before[1]
                if sum(counts) >= 8 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert sum(counts) == 8
            assert (min(counts) >= 2) == spread, counts  # pick_first (the default) sends everything to one


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make venv` installs Debian's prometheus package")
def test_adapter_rule_computes_queue_time_per_request_with_prometheus(tmp_path):
    """Prometheus' own engine (promtool test rules) evaluates the adapter's query on Triton's two counters."""
    (rule,) = ADAPTER["rules"]["custom"]
    # what the adapter substitutes when the HPA asks for the pods of a Deployment
    expr = (rule["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="default",pod=~"triton-a|triton-b"')
            .replace("<<.GroupBy>>", "pod"))
    name = rule["name"]["as"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(
        {"groups": [{"name": "adapter", "rules": [{"record": name, "expr": expr}]}]}))

    def series(metric, pod, model, values):
        return {"series": f'{metric}{{namespace="default",pod="{pod}",model="{model}",version="1"}}',
                "values": values}

    every_15s = [  # pod a: two busy models; pod b: idle (counters flat)
        series("nv_inference_queue_duration_us", "triton-a", "mobilenetv3_pt", "0+1500x12"),
        series("nv_inference_request_success", "triton-a", "mobilenetv3_pt", "0+3x12"),
        series("nv_inference_queue_duration_us", "triton-a", "mobilenetv3_onnx", "0+3000x12"),
        series("nv_inference_request_success", "triton-a", "mobilenetv3_onnx", "0+1x12"),
        series("nv_inference_queue_duration_us", "triton-b", "mobilenetv3_pt", "7000x12"),
        series("nv_inference_request_success", "triton-b", "mobilenetv3_pt", "40x12"),
    ]
    expected = [{"labels": f'{name}{{pod="triton-a"}}', "value": (1500 + 3000) / (3 + 1)},
                {"labels": f'{name}{{pod="triton-b"}}', "value": 0}]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": every_15s,
                   "promql_expr_test": [{"expr": name, "eval_time": "2m", "exp_samples": expected}]}]}))
    proc = subprocess.run([PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
