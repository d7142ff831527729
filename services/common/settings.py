"""Settings from environment variables: one frozen dataclass per service, built by ``from_env()``.

Every variable is documented in the README table with its default. A malformed value stops the service
at start with a message naming the variable, never later in a request.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TypeVar

from models.data.images import DEFAULT_MIN_SIDE, max_pixels_from_env
from models.errors import ConfigError

PREFIX = "LESIONSYNTH_"
T = TypeVar("T")


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(PREFIX + name)
    return default if value is None or value == "" else value


def env_int(name: str, default: int, minimum: int | None = 0, maximum: int | None = None) -> int:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            allowed = f">= {minimum}"
        elif minimum is None:
            allowed = f"<= {maximum}"
        else:
            allowed = f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{PREFIX}{name} must be {allowed}, got {value}")
    return value


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{PREFIX}{name} must be >= {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PREFIX}{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class CommonSettings:
    """What every service reads. ``rest_port`` is informational (``bentoml serve --port`` binds it)."""

    host: str
    grpc_port: int
    #: Bearer token required on REST and gRPC (health exempt); None = auth off (the localhost default).
    api_token: str | None
    max_request_bytes: int
    #: Image limits checked from the header before decoding (models/data/images.py).
    max_pixels: int
    min_image_side: int
    max_batch_items: int
    grpc_workers: int
    #: REST requests in flight per service; beyond it BentoML answers 429 (clients retry). Bounds the
    #: memory held by decoded images waiting for a batch.
    max_concurrency: int
    #: A REST request not answered in this time gets 504 (BentoML's traffic timeout). Synthesis defaults to
    #: 600 s (a sampler runs seconds per image and a batch waits for its turn), the others to 60 s.
    request_timeout_s: float

    @classmethod
    def from_env(
        cls,
        default_grpc_port: int,
        default_request_timeout_s: float = 60.0,
        default_max_request_bytes: int = 32 * 1024 * 1024,
    ) -> CommonSettings:
        token = env_str("API_TOKEN")
        if token is not None and len(token) < 16:
            raise ConfigError(f"{PREFIX}API_TOKEN must be at least 16 characters (got {len(token)})")
        return cls(
            host=env_str("HOST", "127.0.0.1"),
            grpc_port=env_int("GRPC_PORT", default_grpc_port, minimum=0, maximum=65535),
            api_token=token,
            max_request_bytes=env_int("MAX_REQUEST_BYTES", default_max_request_bytes, minimum=1024),
            max_pixels=max_pixels_from_env(),  # its one parser, shared with the CLI
            min_image_side=env_int("MIN_IMAGE_SIDE", DEFAULT_MIN_SIDE, minimum=1, maximum=4096),
            max_batch_items=env_int("MAX_BATCH_ITEMS", 32, minimum=1),
            grpc_workers=env_int("GRPC_WORKERS", 8, minimum=1),
            max_concurrency=env_int("MAX_CONCURRENCY", 64, minimum=1),
            request_timeout_s=env_float("REQUEST_TIMEOUT_S", default_request_timeout_s, minimum=1.0),
        )


@functools.cache
def process_settings(settings_class: type[T]) -> T:
    """``settings_class.from_env()``, read once per process: a service module and its request schemas
    (pydantic validators, which have no other way to the service's settings) share the one instance."""
    return settings_class.from_env()  # type: ignore[attr-defined]
