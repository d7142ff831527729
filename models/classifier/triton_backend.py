"""Score images on a Triton Inference Server over gRPC (KServe v2), the remote twin of the embedded ORT backend.

Shapes: ``infer`` takes a preprocessed batch ``(N, 3, S, S)`` float32 (see the model card's preprocessing)
and sends it as the ``image`` input; Triton returns ``probability`` ``(N, 1)`` float32, returned here as
``(N,)`` float32 P(positive). The model repository comes from ``models.export.triton.export_triton``.

Any failure to reach the server, a model that is not ready, or a timeout raises
:class:`~models.errors.BackendUnavailable` naming the URL and model. The gRPC client is shared by callers
(tritonclient's unary calls are thread-safe) and dropped after a transport failure, so the next call opens
a fresh channel: when Triton comes back, the backend answers again without a restart or gRPC's backoff.
"""

from __future__ import annotations

import threading

import numpy as np

from models.errors import BackendUnavailable, LesionsynthError
from models.export.graph import INPUT_NAME, OUTPUT_NAME, TRITON_NAME


class TritonBackend:
    """Classifier probabilities from a Triton model served over gRPC (``url`` like ``127.0.0.1:8001``)."""

    name = "triton"

    def __init__(self, url: str, model_name: str = TRITON_NAME, timeout_s: float = 10.0):
        import tritonclient.grpc as grpcclient  # lazy: the package is optional ([triton] extra)

        self._grpcclient = grpcclient
        self.url = url.removeprefix("grpc://").rstrip("/")
        self.model_name = model_name
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._client = None

    def _unavailable(self, reason: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"Triton at {self.url} is unavailable (model {self.model_name}): {reason}; retry later"
        )

    def _get_client(self):
        with self._lock:
            if self._client is None:
                # Creating a channel does not connect: the first call does, and fails fast when it cannot.
                self._client = self._grpcclient.InferenceServerClient(
                    self.url, channel_args=self._channel_args()
                )
            return self._client

    def _channel_args(self) -> list[tuple[str, int]]:
        """tritonclient's defaults (message sizes, keepalive) plus a private subchannel pool.

        Why the pool: gRPC shares subchannels between channels to the same address by default, so the
        fresh channel opened after a failure would inherit the old subchannel's reconnect backoff
        (1 s growing to 120 s) and keep answering "failed to connect" for that long after Triton is back
        (seen in CI: the first request after Triton's restart failed). With its own pool a fresh channel
        connects at once; the short backoff bounds how long a live channel waits to reconnect.
        """
        keepalive = self._grpcclient.KeepAliveOptions()
        size = self._grpcclient.MAX_GRPC_MESSAGE_SIZE
        return [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]

    def _drop(self, client) -> None:
        # Forget a client whose channel failed; a caller still using it keeps its own reference.
        with self._lock:
            if self._client is client:
                self._client = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N,) float32 probabilities."""
        from tritonclient.utils import InferenceServerException

        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[0] == 0:
            raise ValueError(f"expected a batch of shape (N, 3, S, S) with N >= 1, got {batch.shape}")
        inp = self._grpcclient.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        outputs = [self._grpcclient.InferRequestedOutput(OUTPUT_NAME)]
        client = self._get_client()
        try:
            try:
                result = client.infer(self.model_name, [inp], outputs=outputs, client_timeout=self.timeout_s)
            except InferenceServerException as first:
                if (first.status() or "").removeprefix("StatusCode.") != "UNAVAILABLE":
                    raise
                # A channel that failed while Triton was away may still report its old error (gRPC's
                # reconnect backoff): try once more on a fresh channel. Connection refused is immediate,
                # so a Triton that is really down costs a second fast failure, not a second timeout.
                self._drop(client)
                client = self._get_client()
                result = client.infer(self.model_name, [inp], outputs=outputs, client_timeout=self.timeout_s)
        except InferenceServerException as e:
            status = (e.status() or "").removeprefix("StatusCode.")
            if status == "INVALID_ARGUMENT":
                raise LesionsynthError(
                    f"Triton model {self.model_name} refused the batch: {e.message()}"
                ) from e
            if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", ""):
                self._drop(client)  # transport trouble: reconnect on the next call
            # Anything else (model not found or not ready, server-side error) is also "not now".
            first_line = (e.message() or "no message").split("\n", 1)[0][:200]
            reason = f"{status or 'error'}: {first_line}"
            raise self._unavailable(reason) from e
        except Exception as e:  # channel closed under us, socket errors, ...
            self._drop(client)
            raise self._unavailable(f"{type(e).__name__}: {str(e)[:200]}") from e
        out = result.as_numpy(OUTPUT_NAME)
        if out is None or out.shape[0] != batch.shape[0]:
            raise self._unavailable(f"unexpected output {None if out is None else out.shape}")
        return out.reshape(batch.shape[0], -1)[:, 0].astype(np.float32, copy=False)

    def ready(self) -> bool:
        """True when the server is live and the model is ready; never raises."""
        client = None
        try:
            client = self._get_client()
            return bool(
                client.is_server_live(client_timeout=self.timeout_s)
                and client.is_model_ready(self.model_name, client_timeout=self.timeout_s)
            )
        except Exception:
            if client is not None:
                self._drop(client)
            return False

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
