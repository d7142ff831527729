"""The review page's JSON API on the training service (the page itself: static/review.html).

A dataset is a balanced folder (or its manifest.csv) inside the data roots or the output root, resolved
like a job's input path (models/jobs/params.py). Files are served only when a synthetic row of that
manifest lists them (models/review.py listed_file) and they lie inside those roots: never an arbitrary
path. Decisions go to the manifest's ``review`` column (models/review.py).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from models import review
from models.errors import NotFoundError

Decision = Literal["accepted", "rejected", ""]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReviewItem(BaseModel):
    image_path: str = Field(description="The synthetic image, relative to the manifest.")
    source_image: str = Field(description="The normal image it was made from, relative to the manifest.")
    mask_path: str
    decision: Decision = Field(description="accepted | rejected | '' (unreviewed).")
    seed: str
    model_version: str


class ReviewList(BaseModel):
    dataset: str
    items: list[ReviewItem]
    counts: dict[str, int] = Field(description="total, accepted, rejected, unreviewed.")


def dataset_path(dataset: str, roots) -> Path:
    from models.errors import ParameterError
    from models.jobs.params import resolve_input

    try:
        path = review.manifest_path(resolve_input("dataset", dataset, roots))
        path.is_file()  # a name the filesystem refuses (too long, ...) fails here, not deeper
    except (OSError, RuntimeError, ValueError):  # RuntimeError: "~user" of no such user
        raise ParameterError("dataset must be a balanced folder's path") from None
    return path


def list_items(dataset: str, roots) -> ReviewList:
    items = review.review_items(dataset_path(dataset, roots))
    return ReviewList(dataset=dataset, items=[ReviewItem(**i) for i in items], counts=review.summary(items))


def set_decision(dataset: str, image_path: str, decision: str, roots) -> ReviewItem:
    return ReviewItem(**review.set_review(dataset_path(dataset, roots), image_path, decision))


def image_png(dataset: str, path: str, roots) -> bytes:
    """A listed file as PNG for the browser (PNG files as they are; JPEG, DICOM ... decoded first)."""
    file = review.listed_file(dataset_path(dataset, roots), path)
    if not any(file.is_relative_to(root) for root in roots.readable):
        raise NotFoundError("that file lies outside the data roots and the output root")
    data = file.read_bytes()
    if data.startswith(PNG_MAGIC):
        return data
    from PIL import Image

    from models.data.images import decode_image

    buf = io.BytesIO()
    Image.fromarray(decode_image(data, role="listed image")).save(buf, format="PNG")
    return buf.getvalue()
