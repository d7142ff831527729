"""A thin DICOMweb client (QIDO-RS search, WADO-RS retrieve, STOW-RS store) and a hospital pipeline's
steps around ``balance``: fetch a study into a folder with a manifest, and turn a balanced folder's
synthetic images into a DICOM series (with SEG masks) to store back.

Tested against a real PACS (Orthanc with its DICOMweb plugin, tests/test_orthanc.py). Plain httpx, no
DICOM toolkit beyond pydicom/highdicom (models/data/dicom.py); a bearer token is sent when given.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from models.errors import ConfigError

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"
SERIES_DESCRIPTION, MODALITY, IMAGE_TYPE = "0008103E", "00080060", "00080008"


def value(item: dict, tag: str, default=None):
    """The first value of ``tag`` in a DICOM JSON object (QIDO-RS result)."""
    values = item.get(tag, {}).get("Value") or []
    return values[0] if values else default


class DicomWebError(ConfigError):
    """The DICOMweb server refused or failed a request (its status is in the message)."""


class DicomWebClient:
    """QIDO-RS / WADO-RS / STOW-RS against ``base_url`` (e.g. ``http://pacs:8042/dicom-web``)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DicomWebError(f"cannot reach the DICOMweb server ({type(exc).__name__})") from exc

    def _get(self, path: str, accept: str, params: dict | None = None) -> httpx.Response:
        r = self._send("GET", path, params=params, headers={"Accept": accept})
        if r.status_code >= 400:
            raise DicomWebError(f"DICOMweb GET {path} answered {r.status_code}")
        return r

    # QIDO-RS
    def search(self, path: str, **filters) -> list[dict]:
        r = self._get(path, DICOM_JSON, {k: str(v) for k, v in filters.items()})
        return [] if r.status_code == 204 or not r.content else r.json()

    def search_studies(self, **filters) -> list[dict]:
        return self.search("/studies", **filters)

    def search_series(self, study_uid: str, **filters) -> list[dict]:
        return self.search(f"/studies/{study_uid}/series", **filters)

    def search_instances(self, study_uid: str, series_uid: str | None = None, **filters) -> list[dict]:
        path = f"/studies/{study_uid}" + (f"/series/{series_uid}" if series_uid else "") + "/instances"
        return self.search(path, **filters)

    # WADO-RS
    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        path = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        r = self._get(path, f'multipart/related; type="{DICOM}"')
        parts = multipart_parts(r.content, r.headers.get("content-type", ""))
        if len(parts) != 1:
            raise DicomWebError(f"DICOMweb GET {path} returned {len(parts)} parts, expected 1")
        return parts[0]

    def retrieve_study(self, study_uid: str) -> list[bytes]:
        r = self._get(f"/studies/{study_uid}", f'multipart/related; type="{DICOM}"')
        return multipart_parts(r.content, r.headers.get("content-type", ""))

    # STOW-RS
    def store(self, instances: list[bytes], study_uid: str | None = None) -> dict:
        boundary = uuid.uuid4().hex
        body = b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: " + DICOM.encode() + b"\r\n\r\n" + data + b"\r\n"
            for data in instances
        )
        body += b"--" + boundary.encode() + b"--\r\n"
        path = "/studies" + (f"/{study_uid}" if study_uid else "")
        headers = {
            "Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}',
            "Accept": DICOM_JSON,
        }
        r = self._send("POST", path, content=body, headers=headers)
        if r.status_code >= 400:
            raise DicomWebError(f"DICOMweb STOW-RS {path} answered {r.status_code}")
        return r.json() if r.content else {}


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a ``multipart/related`` response (RFC 2046), in order."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise DicomWebError("DICOMweb response is not multipart (no boundary)")
    delimiter = b"--" + found.group(1).encode()
    parts = []
    for piece in body.split(delimiter)[1:]:
        if piece.startswith(b"--"):
            break  # the closing delimiter
        _, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            continue
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


# -- a pipeline's steps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    sop_uid: str
    series_uid: str
    sop_class: str
    path: Path


def download_study(client: DicomWebClient, study_uid: str, folder: str | Path) -> list[Instance]:
    """Every instance of a study (WADO-RS) as ``folder/<SOPInstanceUID>.dcm``."""
    from models.artifacts import atomic_write_bytes
    from models.data.dicom import read_dataset

    folder = Path(folder)
    retrieved = client.retrieve_study(study_uid)  # before any folder is made: a failure leaves nothing
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for data in retrieved:
        ds = read_dataset(data)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        atomic_write_bytes(path, data)
        found.append(Instance(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), path))
    return found


def write_manifest(
    instances: list[Instance], folder: str | Path, label_of: Callable, split: str = "train"
) -> Path:
    """A manifest of a downloaded study: one row per image, its mask the SEG that references it.

    ``label_of(dataset) -> str`` names each image's label (from whatever the hospital's records say: a
    tag, a worklist); images without a SEG are left out (no mask)."""
    from models.data.dicom import SEG_SOP_CLASS, read_dataset

    folder = Path(folder)
    masks = {}
    for inst in instances:
        if inst.sop_class == SEG_SOP_CLASS:
            seg = read_dataset(inst.path)
            for series in seg.get("ReferencedSeriesSequence", []):
                for ref in series.get("ReferencedInstanceSequence", []):
                    masks[str(ref.ReferencedSOPInstanceUID)] = inst.path
    rows = []
    for inst in instances:
        if inst.sop_class == SEG_SOP_CLASS or inst.sop_uid not in masks:
            continue
        label = label_of(read_dataset(inst.path))
        rows.append([inst.path.name, masks[inst.sop_uid].name, label, split])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_path", "mask_path", "label", "split"])
    writer.writerows(sorted(rows))
    from models.artifacts import atomic_write_text

    path = folder / "manifest.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def synthetic_series(balanced_manifest: str | Path) -> list[bytes]:
    """A balanced folder's synthetic images as one new DICOM series in their sources' study, each with its
    mask as a SEG: the DICOM instances to store back (sources must be DICOM files)."""
    from pydicom.uid import generate_uid

    from models.artifacts import sha256_file
    from models.data import dicom
    from models.data.images import decode_image, decode_mask
    from models.data.manifest import load_manifest

    manifest = load_manifest(balanced_manifest, check_files=False)
    out: list[bytes] = []
    series: dict[str, tuple[str, str]] = {}  # study -> the new image series, the new SEG series
    synthetic = [r for r in manifest.rows if r.fields.get("synthetic") == "1"]
    for number, row in enumerate(synthetic, start=1):
        source_file = manifest.root / row.fields["source_image"]
        if not dicom.is_dicom(source_file):
            raise ConfigError(f"row {row.number}: the source image is not DICOM; cannot join its study")
        source = dicom.read_dataset(source_file)
        study = str(source.StudyInstanceUID)
        image_series, seg_series = series.setdefault(study, (generate_uid(), generate_uid()))
        made = dicom.write_synthetic_dicom(
            source,
            decode_image(row.image_file, role=f"row {row.number} image"),
            row.fields["model_version"],
            int(row.fields["seed"]),
            series_uid=image_series,
            instance_number=number,
            source_sha256=sha256_file(source_file),
        )
        mask = decode_mask(row.mask_file, role=f"row {row.number} mask")
        seg = dicom.write_mask_seg(
            made,
            mask,
            row.fields["model_version"],
            int(row.fields["seed"]),
            series_uid=seg_series,
            instance_number=number,
        )
        out += [dicom.dataset_bytes(made), dicom.dataset_bytes(seg)]
    return out
