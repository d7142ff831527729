"""Errors a user can act on.

Every error that reaches a person (CLI, REST 4xx, gRPC INVALID_ARGUMENT) derives from
:class:`LesionsynthError` and carries a message that says what was wrong and, where it helps, what to do.
Messages never include image bytes or file names of patient data: they name the *role* of an input
("image", "mask", "row 12") instead, so they are safe to log.
"""

from __future__ import annotations


class LesionsynthError(Exception):
    """Base class: a problem with the user's input or artifacts, not a bug."""


class InvalidImageError(LesionsynthError):
    """Bytes that are not a supported image, a truncated file, or an image over the pixel limit."""


class InvalidMaskError(LesionsynthError):
    """A mask that is empty or does not match its image."""


class ManifestError(LesionsynthError):
    """A manifest with one or more bad rows; ``problems`` lists every one with its row number."""

    def __init__(self, problems: list[str], header: str = "manifest"):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{header}: {len(self.problems)} problem(s):\n{shown}{more}")


class ModelFolderError(LesionsynthError):
    """A model folder that is missing, is not a lesionsynth synthesizer, or fails its sha256 check."""


class ConfigError(LesionsynthError):
    """Options that contradict each other or the data (e.g. a label not present in the manifest)."""


class ParameterError(LesionsynthError):
    """A request parameter out of range (steps, strength, seed, count, ...)."""


class BackendUnavailable(LesionsynthError):
    """An inference backend (e.g. a Triton server) cannot be reached or is not ready; retry later."""


class NotFoundError(LesionsynthError):
    """A job, model version or other named thing that does not exist (REST 404, gRPC NOT_FOUND)."""


class StorageError(LesionsynthError):
    """A write failed for the storage's reason (disk full, quota, read-only, I/O error); nothing partial kept."""
