"""One way to ask a Triton server things (tritonclient, HTTP or gRPC): health, metadata, the repository index, model
configs and statistics, model control. The client, perf tools, the embedded server and the scripts all use it
(from a shell: python -m mnv3kit.cli.triton ready)."""

import json
import time
from typing import List, Optional

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from .errors import KitError
from .spec import ADMIN_KEY_ENV, DEFAULT_URLS, PROTOCOLS, admin_headers



class Restricted(KitError):
    """An admin API (repository index, model control, statistics) that the server guards with a key."""


class Triton:
    """A server at ``url`` (HOST:PORT) over ``protocol``; ``admin_key`` goes with the admin API calls only.

    ``timeout`` bounds every call (HTTP: connection and network timeouts; gRPC: the call's deadline); ``concurrency``
    is the HTTP client's connection pool (async inference).
    """

    def __init__(self, url: Optional[str] = None, protocol: str = "http", admin_key: Optional[str] = None,
                 timeout: float = 60.0, concurrency: int = 1):
        if protocol not in PROTOCOLS:
            raise KitError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.url, self.protocol, self.timeout = url or DEFAULT_URLS[protocol], protocol, timeout
        self.admin = admin_headers(admin_key, protocol)
        if protocol == "http":
            import tritonclient.http as module

            self.client = module.InferenceServerClient(self.url, concurrency=max(1, concurrency),
                                                       connection_timeout=timeout, network_timeout=timeout)
            self._grpc = {}
        else:
            import tritonclient.grpc as module

            self.client = module.InferenceServerClient(self.url)
            self._grpc = {"client_timeout": timeout}
        self.module = module

    def _json(self, **kwargs) -> dict:
        """Arguments that make a gRPC call answer JSON like the HTTP client does."""
        return {**self._grpc, "as_json": True, **kwargs} if self.protocol == "grpc" else kwargs

    # -- health (no key needed) -------------------------------------------------------------------------------
    def live(self) -> bool:
        """The server answers /v2/health/live; False for connection refused, DNS, wrong protocol."""
        try:
            return bool(self.client.is_server_live(**self._grpc))
        except Exception:  # noqa: BLE001 - every transport failure means "nothing answers there"
            return False

    def ready(self) -> bool:
        """/v2/health/ready: every model the server was told to load is ready (with --strict-readiness)."""
        try:
            return bool(self.client.is_server_ready(**self._grpc))
        except Exception:  # noqa: BLE001
            return False

    def wait_ready(self, timeout: float, alive=lambda: True) -> bool:
        """Poll readiness until ``timeout`` s have passed or ``alive()`` says the server process is gone."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if self.ready():
                return True
            time.sleep(0.25)
        return False

    def model_ready(self, name: str) -> bool:
        try:
            return bool(self.client.is_model_ready(name, **self._grpc))
        except Exception:  # noqa: BLE001 - an unknown model is not ready
            return False

    def metadata(self) -> dict:
        """Server metadata: name, version, extensions."""
        return self.client.get_server_metadata(**self._json())

    def version(self) -> str:
        return self.metadata().get("version", "?")

    # -- models --------------------------------------------------------------------------------------------------
    def model_config_json(self, name: str) -> dict:
        """The config the server runs (auto-completed), as Triton's JSON."""
        config = self.client.get_model_config(name, **self._json())
        return config.get("config", config)

    def model_config(self, name: str) -> model_config_pb2.ModelConfig:
        """The same as Triton's ModelConfig protobuf."""
        return json_format.ParseDict(self.model_config_json(name), model_config_pb2.ModelConfig(),
                                     ignore_unknown_fields=True)

    # -- admin APIs (the key) --------------------------------------------------------------------------------------
    def _admin(self, method: str, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return getattr(self.client, method)(*args, headers=self.admin, **kwargs)
        except InferenceServerException as exc:
            # Triton refuses a restricted API with HTTP 403, and over gRPC with UNAVAILABLE: a code that clients
            # retry, for a refusal that no retry changes
            if "restricted" in str(exc).lower() or "403" in str(exc.status() or ""):
                code = "HTTP 403" if self.protocol == "http" else "gRPC UNAVAILABLE, not worth retrying"
                fix = (f"the key in ${ADMIN_KEY_ENV} is not the server's" if self.admin
                       else f"give the server's key in ${ADMIN_KEY_ENV}")
                raise Restricted(f"the server restricts its admin APIs and refused {method} ({code}): {fix}") from None
            raise

    def index(self) -> List[dict]:
        """Repository index entries: name, version, state, reason."""
        index = self._admin("get_model_repository_index", **self._json())
        return index.get("models", []) if isinstance(index, dict) else index

    def ready_models(self) -> List[str]:
        return sorted({m["name"] for m in self.index() if m.get("state") == "READY"})

    def statistics(self, name: str = "") -> dict:
        """Triton's per-model inference statistics (all models when ``name`` is empty)."""
        return self._admin("get_inference_statistics", name, **self._json())

    def load(self, name: str, config: Optional[dict] = None) -> None:
        """Load (or load anew) ``name`` from the repository, with ``config`` instead of its config.pbtxt if given;
        returns once it is loaded. A loaded version keeps serving until the new one is ready."""
        extra = {"config": json.dumps(config)} if config is not None else {}
        self._admin("load_model", name, **self._grpc, **extra)

    def unload(self, name: str) -> None:
        self._admin("unload_model", name, **self._grpc)

    def close(self) -> None:
        self.client.close()
