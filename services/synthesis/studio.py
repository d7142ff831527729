"""The studio (GET /studio, static/studio.html + studio.js): a person's page on the synthesis service.

The page draws its mask in the browser and calls the service's REST API with the bearer token the person
enters (/info, /propose_mask, /synthesize_batch; /synthesize_dicom: a DICOM source's results as DICOM +
SEG). Images a browser cannot decode (DICOM) are shown through /preview: the same decoding every request
gets (models/data/images.py), answered as a PNG.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from services.common.pages import static_pages
from services.common.payloads import BASE64

PAGES = static_pages(
    Path(__file__).parent / "static", {"/studio": "studio.html", "/static/studio.js": "studio.js"}
)


class Preview(BaseModel):
    image: str = Field(description="The decoded image as PNG (8-bit RGB), base64.", json_schema_extra=BASE64)
    width: int
    height: int


def preview(image_b64: str, limits) -> Preview:
    """Decode an image as a synthesis request would (size limits included) and answer it as PNG."""
    import base64
    import io

    from PIL import Image

    from models.data.images import decode_image
    from models.errors import ParameterError
    from services.common.payloads import b64

    try:
        data = b64("image", image_b64)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None
    if not data:
        raise ParameterError("image is missing (empty)")
    pixels = decode_image(data, max_pixels=limits.max_pixels, min_side=limits.min_image_side, role="image")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    h, w = pixels.shape[:2]
    return Preview(image=base64.b64encode(buf.getvalue()).decode(), width=w, height=h)
