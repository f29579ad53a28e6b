"""Malformed requests against a running server: each must be refused as the client's fault, and leave the server
healthy and its answers unchanged.

Every request is built byte by byte (http.client / a raw socket for HTTP, the gRPC service's own protobuf messages
for gRPC), so what reaches the server is exactly the malformation named, not what a client library would tidy up.
After each one: /v2/health/ready and the model's readiness must answer 200, and a real photograph's logits must be
bit-identical to those taken before the sweep.
"""

import http.client
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..process import rss_mb
from ..spec import INPUT_DIMS
from ..triton import Triton

FP32_IMAGE_BYTES = 4 * int(np.prod(INPUT_DIMS))
BIG_BODY_BYTES = 200 * 2 ** 20
TIMEOUT_S = 60.0


@dataclass
class Probe:
    kind: str
    protocol: str
    status: str  # HTTP status, gRPC code name, or what the connection did
    error: str  # the server's error, first line
    healthy: bool  # server and model ready afterwards
    logits_unchanged: bool  # the reference photo's logits bit-identical afterwards
    rss_mb: Optional[float] = None  # server + backend processes afterwards

    @property
    def refused(self) -> bool:
        """Turned down: an error status, or a closed connection for bytes that were never a complete request."""
        return self.status not in ("OK", "no answer") and not (self.status.isdigit() and int(self.status) < 400)

    @property
    def client_error(self) -> bool:
        """Refused as the client's fault: a 4xx or a gRPC status other than INTERNAL/UNKNOWN (not a 5xx)."""
        if self.status.isdigit():
            return 400 <= int(self.status) < 500
        return self.refused and self.status not in ("INTERNAL", "UNKNOWN")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def send_http(host: str, port: int, method: str, path: str, body: bytes = b"",
              headers: Optional[dict] = None) -> Tuple[str, str]:
    """One raw HTTP request: (status, the server's one-line error), or ("no answer", why) when none came."""
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return "no answer", f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    try:
        error = json.loads(data).get("error", "")
    except (ValueError, AttributeError):
        error = data.decode(errors="replace")
    return str(response.status), _first_line(error)


def nested_json_request(model: str) -> Tuple[str, str, bytes, dict]:
    """The request that kills tritonserver 2.51: its JSON parser recurses once per nesting level on the HTTP
    thread's stack (fixed upstream by triton-inference-server/common#156). (method, path, body, headers)."""
    return "POST", f"/v2/models/{model}/infer", b"[" * 200_000, {"Content-Type": "application/json"}


class Target:
    """One model of a running server: where to reach it, and its reference answer."""

    def __init__(self, server, model):
        """server: a started LocalTriton; model: the ModelSpec of one of its models."""
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self.host, self.http_port, self.grpc_port = server.host, server.ports.http, server.ports.grpc
        self.model, self.pid = model, server.proc.pid
        self.triton = Triton(server.http_url, timeout=TIMEOUT_S)  # readiness and health, as any client asks them
        self.max_batch = int(server.api.model_config_json(model.name)["max_batch_size"])
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(server.grpc_url, options=unlimited)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.reference: Optional[np.ndarray] = None
        self.photo: Optional[np.ndarray] = None

    # -- raw HTTP -------------------------------------------------------------------------------------------------
    def http(self, method: str, path: str, body: bytes = b"", headers: Optional[dict] = None) -> Tuple[str, str]:
        return send_http(self.host, self.http_port, method, path, body, headers)

    def infer_http(self, header: dict, binary: bytes = b"", model: Optional[str] = None, version: str = "",
                   header_length: Optional[int] = None) -> Tuple[str, str]:
        """An infer request with a JSON header and binary tensor data after it (Triton's binary extension)."""
        text = json.dumps(header).encode()
        headers = {"Content-Type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(len(text) if header_length is None else header_length)}
        versioned = f"/versions/{version}" if version else ""
        return self.http("POST", f"/v2/models/{model or self.model.name}{versioned}/infer", text + binary, headers)

    def raw_socket(self, port: int, data: bytes, wait_s: float = 5.0) -> Tuple[str, str]:
        """Send bytes and close our side after wait_s (or when the server closes first); what came back."""
        with socket.create_connection((self.host, port), timeout=wait_s) as sock:
            sock.sendall(data)
            received = b""
            deadline = time.monotonic() + wait_s
            try:
                while time.monotonic() < deadline:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            except socket.timeout:
                pass
            except ConnectionResetError:
                return "reset", f"connection reset after {len(received)} bytes back"
        if received.startswith(b"HTTP/"):
            status_line = received.split(b"\r\n", 1)[0].decode(errors="replace")
            return status_line.split()[1], status_line
        return "closed", f"{len(received)} bytes back, then closed" if received else "closed without an answer"

    # -- raw gRPC -------------------------------------------------------------------------------------------------
    def infer_grpc(self, shape, datatype: str = "FP32", raw: Optional[bytes] = None, name: Optional[str] = None,
                   model: Optional[str] = None, version: str = "", outputs=(), inputs: bool = True
                   ) -> Tuple[str, str]:
        import grpc
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelInferRequest(model_name=model or self.model.name, model_version=version)
        if inputs:
            tensor = request.inputs.add(name=name or self.model.input_name, datatype=datatype)
            tensor.shape.extend(shape)
            request.raw_input_contents.append(raw if raw is not None else bytes(4 * int(np.prod(shape))))
        for output in outputs:
            request.outputs.add(name=output)
        try:
            self.stub.ModelInfer(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code().name, _first_line(exc.details() or "")
        return "OK", ""

    def logits(self) -> np.ndarray:
        """The reference photo through the normal path (tritonclient, gRPC)."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"{self.host}:{self.grpc_port}")
        try:
            inp = grpcclient.InferInput(self.model.input_name, list(self.photo.shape), "FP32")
            inp.set_data_from_numpy(self.photo)
            return client.infer(self.model.name, [inp], client_timeout=TIMEOUT_S).as_numpy(self.model.output_name)
        finally:
            client.close()

    def healthy(self) -> bool:
        return self.triton.ready() and self.triton.model_ready(self.model.name)

    def close(self) -> None:
        self.channel.close()
        self.triton.close()


def _image(value: float = 0.0, batch: int = 1) -> np.ndarray:
    return np.full((batch, *INPUT_DIMS), value, np.float32)


def _header(shape, datatype="FP32", name=None, size=None, outputs=None, target=None) -> dict:
    """A binary-data infer header for one input of `shape` (binary_data_size: its bytes unless given)."""
    nbytes = 4 * int(np.prod(shape)) if size is None else size
    header = {"inputs": [{"name": name or target.model.input_name, "shape": list(shape), "datatype": datatype,
                          "parameters": {"binary_data_size": nbytes}}]}
    if outputs:
        header["outputs"] = [{"name": o} for o in outputs]
    return header


def malformed_requests(t: Target) -> List[Tuple[str, str, Callable[[], Tuple[str, str]]]]:
    """(kind, protocol, send) for every malformation; send() returns (status, the server's error line)."""
    one = list((1, *INPUT_DIMS))
    image = _image().tobytes()
    path = f"/v2/models/{t.model.name}/infer"
    over = [t.max_batch + 1, *INPUT_DIMS]
    big_batch = BIG_BODY_BYTES // FP32_IMAGE_BYTES
    nan, inf = _image(), _image()
    nan[0, 1, 100, 100], inf[0, 0, 0, 0] = np.nan, np.inf

    def h(**kw):
        return _header(target=t, **kw)

    json_body = {"Content-Type": "application/json"}
    return [
        ("invalid JSON", "http", lambda: t.http("POST", path, b'{"inputs": [{"name": ', json_body)),
        ("empty body", "http", lambda: t.http("POST", path, b"", json_body)),
        ("JSON data of the wrong length", "http", lambda: t.http("POST", path, json.dumps(
            {"inputs": [{"name": t.model.input_name, "shape": one, "datatype": "FP32", "data": [0.5] * 10}]}
        ).encode(), json_body)),
        ("wrong datatype (INT64)", "http", lambda: t.infer_http(h(shape=one, datatype="INT64", size=len(image) * 2),
                                                                image * 2)),
        ("wrong datatype (INT64)", "grpc", lambda: t.infer_grpc(one, "INT64", image * 2)),
        ("unknown datatype", "http", lambda: t.infer_http(h(shape=one, datatype="FP33"), image)),
        ("wrong shape (3x224x225)", "http", lambda: t.infer_http(h(shape=[1, 3, 224, 225]), bytes(4 * 3 * 224 * 225))),
        ("wrong shape (3x224x225)", "grpc", lambda: t.infer_grpc([1, 3, 224, 225])),
        ("too many dims", "http", lambda: t.infer_http(h(shape=[1, *one]), image)),
        ("too many dims", "grpc", lambda: t.infer_grpc([1, *one], raw=image)),
        ("no batch dim", "grpc", lambda: t.infer_grpc(list(INPUT_DIMS), raw=image)),
        ("negative dim", "http", lambda: t.infer_http(h(shape=[1, 3, -224, 224], size=len(image)), image)),
        ("negative dim", "grpc", lambda: t.infer_grpc([1, 3, -224, 224], raw=image)),
        ("batch 0", "http", lambda: t.infer_http(h(shape=[0, *INPUT_DIMS]), b"")),
        ("batch 0", "grpc", lambda: t.infer_grpc([0, *INPUT_DIMS], raw=b"")),
        ("dims whose byte size overflows int64", "http",
         lambda: t.infer_http(h(shape=[1, 3, 2 ** 31, 2 ** 31], size=len(image)), image)),
        ("dims whose byte size overflows int64", "grpc", lambda: t.infer_grpc([1, 3, 2 ** 31, 2 ** 31], raw=image)),
        (f"batch {t.max_batch + 1} > max_batch_size", "http",
         lambda: t.infer_http(h(shape=over), bytes(FP32_IMAGE_BYTES * (t.max_batch + 1)))),
        (f"batch {t.max_batch + 1} > max_batch_size", "grpc", lambda: t.infer_grpc(over)),
        ("missing input", "http", lambda: t.http("POST", path, b'{"inputs": []}', json_body)),
        ("missing input", "grpc", lambda: t.infer_grpc(one, inputs=False)),
        ("unknown input name", "http", lambda: t.infer_http(h(shape=one, name="NOT_AN_INPUT"), image)),
        ("unknown input name", "grpc", lambda: t.infer_grpc(one, name="NOT_AN_INPUT", raw=image)),
        ("unknown output requested", "http", lambda: t.infer_http(h(shape=one, outputs=["NOT_AN_OUTPUT"]), image)),
        ("unknown output requested", "grpc", lambda: t.infer_grpc(one, raw=image, outputs=["NOT_AN_OUTPUT"])),
        ("binary data shorter than declared", "http", lambda: t.infer_http(h(shape=one), image[:-1000])),
        ("binary data shorter than declared", "grpc", lambda: t.infer_grpc(one, raw=image[:-1000])),
        ("binary data longer than declared", "http", lambda: t.infer_http(h(shape=one), image + bytes(1000))),
        ("binary data longer than declared", "grpc", lambda: t.infer_grpc(one, raw=image + bytes(1000))),
        ("Inference-Header-Content-Length beyond the body", "http",
         lambda: t.infer_http(h(shape=one), image, header_length=10 ** 7)),
        ("Inference-Header-Content-Length not a number", "http", lambda: t.http(
            "POST", path, json.dumps(h(shape=one)).encode() + image,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "abc"})),
        ("unknown model", "http", lambda: t.infer_http(h(shape=one), image, model="no_such_model")),
        ("unknown model", "grpc", lambda: t.infer_grpc(one, raw=image, model="no_such_model")),
        ("unknown version", "http", lambda: t.infer_http(h(shape=one), image, version="99")),
        ("unknown version", "grpc", lambda: t.infer_grpc(one, raw=image, version="99")),
        ("NaN pixel", "http", lambda: t.infer_http(h(shape=one), nan.tobytes())),
        ("NaN pixel", "grpc", lambda: t.infer_grpc(one, raw=nan.tobytes())),
        ("Inf pixel", "http", lambda: t.infer_http(h(shape=one), inf.tobytes())),
        ("Inf pixel", "grpc", lambda: t.infer_grpc(one, raw=inf.tobytes())),
        (f"200 MB body (batch {big_batch})", "http",
         lambda: t.infer_http(h(shape=[big_batch, *INPUT_DIMS]), bytes(FP32_IMAGE_BYTES * big_batch))),
        (f"200 MB message (batch {big_batch})", "grpc", lambda: t.infer_grpc([big_batch, *INPUT_DIMS])),
        ("Content-Length beyond what is sent, client closes", "http", lambda: t.raw_socket(
            t.http_port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10 ** 8}\r\n\r\n".encode() + image,
            wait_s=1.0)),
        ("garbage bytes instead of HTTP", "http", lambda: t.raw_socket(t.http_port, os.urandom(4096) + b"\r\n\r\n")),
        ("garbage bytes instead of HTTP/2", "grpc", lambda: t.raw_socket(t.grpc_port, os.urandom(4096))),
    ]


def server_killers(t: Target) -> List[Tuple[str, str, Callable[[], Tuple[str, str]]]]:
    """Requests that kill tritonserver 2.51 (nested_json_request). Sent last, after every other kind."""
    return [("deeply nested JSON (200 KB of '[')", "http", lambda: t.http(*nested_json_request(t.model.name)))]


def sweep(t: Target, photo: np.ndarray, log: Callable[[str], None] = lambda line: None,
          killers: bool = False) -> List[Probe]:
    """Every malformed request in turn, each followed by the health and logits checks; with killers, the
    requests that end the server last."""
    t.photo = photo
    t.reference = t.logits()
    probes = []
    for kind, protocol, send in malformed_requests(t) + (server_killers(t) if killers else []):
        status, error = send()
        healthy = t.healthy()
        try:
            unchanged = t.logits().tobytes() == t.reference.tobytes()
        except Exception:  # noqa: BLE001 - a server that no longer answers is what this records
            unchanged = False
        probe = Probe(kind, protocol, status, error, healthy, unchanged, round(rss_mb(t.pid), 1))
        log(f"{kind} [{protocol}]: {status} {error[:80]} | healthy {healthy}, logits unchanged {unchanged}")
        probes.append(probe)
    return probes


def refused_body_rss(t: Target, protocol: str, count: int = 10, settle_s: float = 3.0) -> dict:
    """tritonserver's own RSS (MiB) before, after the first and after ``count`` refused 200 MB requests (a batch far
    above max_batch_size), and settle_s later."""
    batch = BIG_BODY_BYTES // FP32_IMAGE_BYTES
    shape = [batch, *INPUT_DIMS]
    body = bytes(FP32_IMAGE_BYTES * batch)
    rss = {"before": rss_mb(t.pid, tree=False)}
    for i in range(count):
        if protocol == "http":
            status, error = t.infer_http(_header(shape, target=t), body)
        else:
            status, error = t.infer_grpc(shape, raw=body)
        if i in (0, count - 1):
            rss["after_1" if i == 0 else f"after_{count}"] = rss_mb(t.pid, tree=False)
    time.sleep(settle_s)
    rss[f"{settle_s:g}s_later"] = rss_mb(t.pid, tree=False)
    return {"protocol": protocol, "status": status, "error": error, **{k: round(v) for k, v in rss.items()}}


def write_report(probes: List[Probe], output: Path, title: str) -> Tuple[Path, Path]:
    """malformed.json (every field) and malformed.md (a table) in output."""
    output.mkdir(parents=True, exist_ok=True)
    data = output / "malformed.json"
    data.write_text(json.dumps([{**asdict(p), "refused": p.refused, "client_error": p.client_error}
                                for p in probes], indent=1) + "\n")
    rows = [f"# {title}", "", "| kind | protocol | status | server's error | healthy after | logits unchanged "
            "| RSS MB |", "|---|---|---|---|---|---|---|"]
    for p in probes:
        error = p.error.replace("|", "\\|")
        rows.append(f"| {p.kind} | {p.protocol} | {p.status} | {error} | {'yes' if p.healthy else 'NO'} "
                    f"| {'yes' if p.logits_unchanged else 'NO'} | {p.rss_mb} |")
    table = output / "malformed.md"
    table.write_text("\n".join(rows) + "\n")
    return table, data
