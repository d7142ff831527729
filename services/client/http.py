"""REST clients of the synthesis and classifier services.

Retries: connection errors and 429/502/503/504 are retried with exponential backoff and jitter
(``backoff_s * 2**attempt``, up to ``retries`` times); any other 4xx is the caller's mistake and raises
:class:`RemoteError` at once with the service's message (which says what was wrong). Concurrency is
bounded by ``max_concurrency`` threads, so a pipeline cannot flood a service; the service's adaptive
batching merges the concurrent requests.
"""

from __future__ import annotations

import base64
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from tqdm import tqdm

from models.errors import LesionsynthError

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class RemoteError(LesionsynthError):
    """The service refused a request (or stayed unavailable through every retry)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class SynthesisReply:
    png: bytes
    seed: int
    steps: int
    strength: float
    model_version: str
    #: The proposed mask (PNG bytes) when the request had no mask; None otherwise.
    mask_png: bytes | None = None


class _Client:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout_s: float = 300.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_concurrency: int = 4,
    ):
        if max_concurrency < 1 or retries < 0:
            raise LesionsynthError("max_concurrency must be >= 1 and retries >= 0")
        token = token if token is not None else os.environ.get("LESIONSYNTH_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, limits=limits)
        self.url, self.retries, self.backoff_s, self.max_concurrency = (
            url,
            retries,
            backoff_s,
            max_concurrency,
        )

    def post(self, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.http.post(path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise RemoteError(f"{self.url}{path}: cannot connect ({type(exc).__name__})") from exc
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES or last:
                    raise RemoteError(f"{self.url}{path}: {_message(response)}", response.status_code)
            time.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def info(self) -> dict:
        return self.post("/info").json()

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _message(response: httpx.Response) -> str:
    """The ``detail`` of the service's problem details (RFC 9457; services/common/errors.py)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"HTTP {response.status_code}: {body['detail']}"
    return f"HTTP {response.status_code}"


class SynthesisClient(_Client):
    def propose_mask(
        self, image: bytes, *, seed: int | None = None, roi_mask: bytes | None = None
    ) -> tuple[bytes, int]:
        """A proposed lesion mask for ``image`` (encoded bytes): (mask PNG 0/255, seed); the same seed
        gives the same mask."""
        body = {
            "image": base64.b64encode(image).decode(),
            "seed": seed,
            "roi_mask": base64.b64encode(roi_mask).decode() if roi_mask else None,
        }
        reply = self.post("/propose_mask", json=body).json()
        return base64.b64decode(reply["mask"]), int(reply["seed"])

    def synthesize(
        self,
        image: bytes,
        mask: bytes | None,
        *,
        seed: int | None = None,
        steps: int | None = None,
        strength: float | None = None,
    ) -> SynthesisReply:
        """One image + mask (encoded bytes) -> the synthesized PNG and the settings used. ``mask`` None:
        the service proposes one and returns it (``mask_png``)."""
        data = {
            k: str(v) for k, v in (("seed", seed), ("steps", steps), ("strength", strength)) if v is not None
        }
        files = {"image": ("image", image, "application/octet-stream")}
        if mask is not None:
            files["mask"] = ("mask", mask, "application/octet-stream")
        r = self.post("/synthesize", files=files, data=data)
        proposed = None
        if r.headers.get("x-proposed-mask") == "true":  # a large mask is not in a header: ask again
            if "x-mask-png" in r.headers:
                proposed = base64.b64decode(r.headers["x-mask-png"])
            else:
                proposed = self.propose_mask(image, seed=int(r.headers["x-seed"]))[0]
        return SynthesisReply(
            r.content,
            int(r.headers["x-seed"]),
            int(r.headers["x-steps"]),
            float(r.headers["x-strength"]),
            r.headers["x-model-version"],
            proposed,
        )

    def synthesize_many(
        self,
        pairs: Sequence[tuple[bytes, bytes, int | None]],
        *,
        steps: int | None = None,
        strength: float | None = None,
        progress: bool = True,
    ) -> list[SynthesisReply]:
        """(image, mask, seed) triples -> replies in input order, ``max_concurrency`` in flight."""

        def one(pair):
            image, mask, seed = pair
            return self.synthesize(image, mask, seed=seed, steps=steps, strength=strength)

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(
                tqdm(
                    pool.map(one, pairs),
                    total=len(pairs),
                    desc="synthesize (remote)",
                    unit="img",
                    disable=not progress,
                )
            )


class ClassifierClient(_Client):
    def classify(self, image: bytes) -> dict:
        """Encoded image bytes -> {probability, positive, threshold, model_version, positive_label}."""
        return self.post("/classify", files={"image": ("image", image, "application/octet-stream")}).json()

    def classify_many(self, images: Sequence[bytes], progress: bool = True) -> list[dict]:
        def one(image: bytes) -> dict:
            body = {"items": [{"image": base64.b64encode(image).decode()}]}
            return self.post("/classify_batch", json=body).json()[0]

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(
                tqdm(pool.map(one, images), total=len(images), desc="classify (remote)", disable=not progress)
            )
