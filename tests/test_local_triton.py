"""The --target local repository loads in the real tritonserver (nvidia-pytriton's) and serves what the files give."""

import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as httpclient
from google.protobuf import json_format

from mnv3kit.backend.classifier_model import cpu_threads, physical_cores
from mnv3kit.build import BuildOptions, build
from mnv3kit.errors import KitError
from mnv3kit.parity import allowed_difference, parity_batch
from mnv3kit.server import (LOG_KEEP, LocalTriton, Ports, check_stub_numpy, keep_log, stub_numpy_version,
                            visible_gpus)
from mnv3kit.render import ConfigOptions, Instances
from mnv3kit.spec import LOCAL_MODELS, ONNX, PT
from mnv3kit.validate import parse_config


def in_process(repo, x):
    """What model.pt (TorchScript) and model.onnx (ONNX Runtime) give in this process for batch x."""
    scripted = torch.jit.load(str(repo / PT.name / "1" / PT.artifact))
    session = ort.InferenceSession(str(repo / ONNX.name / "1" / ONNX.artifact), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        return {PT.name: scripted(torch.from_numpy(x)).numpy(),
                ONNX.name: session.run(None, {ONNX.input_name: x})[0]}


@pytest.mark.parametrize("arch", ["small", "large"])
def test_local_repository_serves_in_process_logits(built_repo, photos, arch):
    repo = built_repo(arch, "local")
    x = parity_batch(photos, 8)
    with LocalTriton(repo, Ports.free()) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_server_ready()
        for batch in (1, 8):  # compared at the same batch size: CPU kernels differ in rounding across sizes
            expected = in_process(repo, x[:batch])
            for spec in LOCAL_MODELS:
                assert client.is_model_ready(spec.name)
                inp = httpclient.InferInput(spec.input_name, [batch, 3, 224, 224], "FP32")
                inp.set_data_from_numpy(x[:batch], binary_data=True)
                served = client.infer(spec.name, [inp]).as_numpy(spec.output_name)
                # 1e-4 x max(1, max|logit|): thread count alone moves FP32 logits of ~30 by ~1e-4
                np.testing.assert_allclose(served, expected[spec.name], rtol=0,
                                           atol=allowed_difference(expected[spec.name]))
    assert server.proc.poll() is not None  # stopped


def test_broken_repository_reports_server_errors(built_repo, tmp_path):
    repo = tmp_path / "broken"
    shutil.copytree(built_repo("small", "local"), repo)
    (repo / PT.name / "1" / PT.artifact).write_bytes(b"not torchscript")
    server = LocalTriton(repo, Ports.free())
    with pytest.raises(KitError) as err:
        server.start()
    server.close()
    assert "tritonserver exited" in str(err.value)
    assert PT.name in str(err.value)
    for noise in ("CudaDriverHelper", "NVML"):  # what a machine without a GPU logs at every start
        assert noise not in str(err.value)


def test_each_start_keeps_the_previous_logs_up_to_log_keep(tmp_path):
    log = tmp_path / "triton.log"
    assert keep_log(log) is None  # nothing to keep
    for n in range(LOG_KEEP + 2):
        log.write_text(f"server {n}\n")
        assert keep_log(log) == tmp_path / "triton.log.1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"triton.log.{k}" for k in range(1, LOG_KEEP + 1)]
    for k in range(1, LOG_KEEP + 1):  # newest first
        assert (tmp_path / f"triton.log.{k}").read_text() == f"server {LOG_KEEP + 2 - k}\n"


def test_cuda_pool_flag_per_visible_gpu(tmp_path, monkeypatch):
    """One --cuda-memory-pool-byte-size per GPU tritonserver will see: nvidia-smi -L's lines, limited by
    CUDA_VISIBLE_DEVICES; none without nvidia-smi (this machine), so CPU hosts start as before."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if shutil.which("nvidia-smi") is None:
        assert visible_gpus() == 0 and LocalTriton(tmp_path, Ports.free()).cuda_pools == []
    smi = tmp_path / "bin" / "nvidia-smi"  # prints what nvidia-smi -L prints on a 2-GPU host
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:{os.environ['PATH']}")
    server = LocalTriton(tmp_path, Ports.free(), cuda_pool_mb=512)
    assert server.cuda_pools == [f"--cuda-memory-pool-byte-size={gpu}:{512 << 20}" for gpu in (0, 1)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpus() == 1


def test_the_embedded_server_refuses_numpy_2_beside_its_stub():
    """nvidia-pytriton 0.7.0's stub under numpy 2 serves zeros in and empty outputs out without an error
    (docs/gpu.md#the-data-path-numpy-below-2): the server does not start there, and says what to install. The
    version is read where the stub imports numpy, PYTHONPATH aside."""
    assert stub_numpy_version() == np.__version__  # what the kit's own environment installs: accepted
    check_stub_numpy(stub_numpy_version())
    check_stub_numpy("1.26.4")
    for version in ("2.0.0", "2.0.0rc1", "2.5.2"):
        with pytest.raises(KitError, match=r"-m pip install 'numpy<2'"):
            check_stub_numpy(version)


def test_free_ports_are_distinct():
    """Three ports for one server are always three (tritonserver refuses one port for HTTP and gRPC), also when some
    are given and the rest picked (ports_of: a picked one is never a given one)."""
    import argparse

    from mnv3kit.cli import add_ports, ports_of

    for _ in range(300):
        ports = Ports.free()
        assert len({ports.http, ports.grpc, ports.metrics}) == 3
    parser = argparse.ArgumentParser()
    add_ports(parser, free=True)
    for _ in range(100):
        ports = ports_of(parser.parse_args(["--grpc-port", str(ports.http)]))
        assert len({ports.http, ports.grpc, ports.metrics}) == 3


def test_cpu_instances_share_the_cores(tmp_path, photos):
    """Each CPU instance is a process of its own: with two, each computes on half the cores (at least one thread),
    not on every core as a runtime's default would, and answers as the files give."""
    repo = tmp_path / "model_repository"
    build(BuildOptions(arch="small", output=repo, config=ConfigOptions(target="local", instances=Instances("KIND_CPU", 2))))
    each = max(1, physical_cores() // 2)
    for spec in LOCAL_MODELS:  # as Triton hands the config to initialize(): its JSON, field names as in the schema
        config = json_format.MessageToDict(parse_config(repo / spec.name / "config.pbtxt"),
                                           preserving_proto_field_name=True)
        assert cpu_threads(config, {}) == each
        assert cpu_threads(config, {"threads": "3"}) == 3  # the model's own parameter wins
        config["instance_group"][0]["count"] = 1
        assert cpu_threads(config, {}) == 0  # one instance: the runtime's default, a thread per core
        config["instance_group"].append({"kind": "KIND_GPU", "count": 4})
        assert cpu_threads(config, {}) == 0  # GPU instances take no CPU share
    x = parity_batch(photos, 8)
    expected = in_process(repo, x)
    with LocalTriton(repo, Ports.free()) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        for spec in LOCAL_MODELS:
            inp = httpclient.InferInput(spec.input_name, [8, 3, 224, 224], "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            served = client.infer(spec.name, [inp]).as_numpy(spec.output_name)
            np.testing.assert_allclose(served, expected[spec.name], rtol=0, atol=allowed_difference(expected[spec.name]))
        log = server.log_text()
    for spec in LOCAL_MODELS:
        for instance in (0, 1):
            assert f"{spec.name}_0_{instance}: CPU threads {each}\"" in log, log[-3000:]
