"""Classifier service settings (environment variables; table in README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from models.classifier.screening import PRECISIONS
from models.errors import ConfigError
from services.common.settings import PREFIX, CommonSettings, env_bool, env_float, env_int, env_str
from services.harness import SERVICES


def env_precision() -> str:
    raw = env_str("CLASSIFIER_PRECISION", "fp32")
    if raw not in PRECISIONS:
        raise ConfigError(f"{PREFIX}CLASSIFIER_PRECISION must be one of {', '.join(PRECISIONS)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class ClassifierSettings:
    common: CommonSettings
    #: A serving folder path (lesionsynth export-serving), a store version of kind classifier-onnx, or "latest".
    model: str
    model_store: str
    #: Set: score on this Triton server (gRPC host:port) instead of embedded ONNX Runtime.
    triton_url: str | None
    #: Which graph of the serving folder scores: fp32 (model.onnx) or int8 (model.int8.onnx; on Triton the
    #: card's ``<name>_int8`` model). The ONNX Runtime fallback uses the same one.
    precision: str
    #: Model name on Triton; unset: the name in the serving folder's card (for int8, its INT8 model).
    triton_model: str | None
    triton_timeout_s: float
    #: With Triton down: answer from embedded ONNX Runtime (True) or 503 / UNAVAILABLE (False, the default).
    fallback_to_onnxruntime: bool
    #: BentoML worker threads for the sync REST APIs (BentoML's default is 1: one request at a time).
    threads: int
    #: ONNX Runtime intra-op threads; 0 = its default (all cores). Default 1 when ``threads`` > 1: several
    #: single-threaded inferences at once beat one multi-threaded one on a busy CPU (docs/PERFORMANCE.md).
    ort_threads: int
    max_batch_size: int
    max_latency_ms: int
    reload_interval_s: float

    @classmethod
    def from_env(cls) -> ClassifierSettings:
        return cls(
            common=CommonSettings.from_env(default_grpc_port=SERVICES["classifier"].grpc_port),
            model=env_str("CLASSIFIER", "latest"),
            model_store=env_str("MODEL_STORE", "runs/model-store"),
            # TRITON_URL without the prefix too: it is what Triton users set.
            triton_url=env_str("TRITON_URL") or os.environ.get("TRITON_URL") or None,
            precision=env_precision(),
            triton_model=env_str("TRITON_MODEL"),
            triton_timeout_s=env_float("TRITON_TIMEOUT_S", 10.0, minimum=0.1),
            fallback_to_onnxruntime=env_bool("FALLBACK_TO_ONNXRUNTIME", False),
            threads=(threads := env_int("CLASSIFIER_THREADS", 4, minimum=1, maximum=256)),
            ort_threads=env_int("ORT_THREADS", 1 if threads > 1 else 0),
            max_batch_size=env_int("CLASSIFIER_MAX_BATCH_SIZE", 64, minimum=2),
            max_latency_ms=env_int("CLASSIFIER_MAX_LATENCY_MS", 10_000, minimum=10),
            reload_interval_s=env_float("RELOAD_INTERVAL_S", 0.0),
        )
