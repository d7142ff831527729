"""Python client of the lesionsynth services, for data pipelines: bounded concurrency, retries with
backoff, progress bars. ``from services.client import SynthesisClient, ClassifierClient``."""

from services.client.http import ClassifierClient, RemoteError, SynthesisClient, SynthesisReply

__all__ = ["ClassifierClient", "RemoteError", "SynthesisClient", "SynthesisReply"]
