"""Synthesis service settings (environment variables; table in README.md)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import CommonSettings, env_float, env_int, env_str
from services.harness import SERVICES


@dataclass(frozen=True)
class SynthesisSettings:
    common: CommonSettings
    #: A synthesizer folder path, a model-store version, or "latest" (the store's newest).
    model: str
    model_store: str
    #: "auto" (CUDA when present), "cpu" or "cuda[:N]".
    device: str
    #: Crops per UNet batch inside one call.
    unet_batch_size: int
    #: Adaptive batching of the batch API: most items merged into one call, and how long to wait.
    max_batch_size: int
    max_latency_ms: int
    #: Seconds between checks for a newer store version when ``model`` is "latest"; 0 = never.
    reload_interval_s: float
    #: A shape bank (folder or file, ``lesionsynth masks bank``) for mask proposals when the loaded
    #: synthesizer folder carries none; None: only the synthesizer's own bank.
    shape_bank: str | None = None

    @classmethod
    def from_env(cls) -> SynthesisSettings:
        return cls(
            common=CommonSettings.from_env(
                default_grpc_port=SERVICES["synthesis"].grpc_port, default_request_timeout_s=600.0
            ),
            model=env_str("SYNTHESIZER", "latest"),
            model_store=env_str("MODEL_STORE", "runs/model-store"),
            device=env_str("DEVICE", "auto"),
            unet_batch_size=env_int("UNET_BATCH_SIZE", 16, minimum=1),
            max_batch_size=env_int("SYNTHESIS_MAX_BATCH_SIZE", 16, minimum=2),
            max_latency_ms=env_int("SYNTHESIS_MAX_LATENCY_MS", 60_000, minimum=10),
            reload_interval_s=env_float("RELOAD_INTERVAL_S", 0.0),
            shape_bank=env_str("SHAPE_BANK"),
        )
