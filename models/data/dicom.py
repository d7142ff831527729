"""DICOM in and out (pydicom, highdicom; both imported only when a DICOM file is met).

In: :func:`decode_dicom_image` and :func:`decode_dicom_mask` are what ``decode_image``/``decode_mask``
(models/data/images.py) run for bytes with the DICOM preamble ("DICM" at offset 128), so every CLI,
manifest, REST (``application/dicom``) and gRPC path accepts DICOM. The same pixel limit, minimum side and
messages as other formats apply, checked from the header (Rows x Columns) before pixel data is decoded.
Compressed transfer syntaxes are decoded by pylibjpeg's plugins (JPEG baseline/extended and lossless:
pylibjpeg-libjpeg; JPEG 2000: pylibjpeg-openjpeg; RLE: pydicom itself).

The pixel rule (to RGB uint8, one frame):
  - multi-frame objects (NumberOfFrames > 1: cine loops, volumes) are refused: send one frame;
  - MONOCHROME2 grey is repeated into R, G, B; MONOCHROME1 is inverted first (high values are dark);
    RGB stays; YBR_* is converted to RGB by pydicom; PALETTE COLOR goes through its palette;
  - 8-bit unsigned samples are used as they are;
  - more than 8 bits stored (CR/DX, 16-bit ultrasound): the Modality LUT (rescale slope/intercept) is
    applied, then the first VOI window in the file (WindowCenter/WindowWidth, DICOM's linear function)
    maps onto 0..255; without a window (or with a VOI LUT sequence, applied first), the image's own
    min..max is scaled linearly to 0..255. Colour data with
    more than 8 bits is scaled from 0..2**BitsStored-1 to 0..255.
Masks: a DICOM SEG (any segment, BINARY or FRACTIONAL > half of its maximum) is the union of its
segments' frames; any other single-frame DICOM image is a mask where its grey value (after the rule
above) is > 127.

Out: :func:`write_synthetic_dicom` makes a synthetic image a new Secondary Capture series in the source's
study (ConversionType SYN, ImageType DERIVED\\SECONDARY, descriptions saying SYNTHETIC with the model
version and seed, the source in SourceImageSequence, new UIDs, patient and study copied);
:func:`write_mask_seg` writes its mask as a DICOM SEG (highdicom) that references the synthetic image.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.errors import InvalidImageError, InvalidMaskError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

PREAMBLE = 128
MAGIC = b"DICM"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
#: The ImageType of every synthetic image we write; readers test for "DERIVED" and the descriptions.
SYNTHETIC_IMAGE_TYPE = ["DERIVED", "SECONDARY"]
MANUFACTURER = "lesionsynth"


def is_dicom(data: bytes | Path) -> bool:
    """True for bytes or a file with the DICOM Part 10 preamble ("DICM" at offset 128)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data[PREAMBLE : PREAMBLE + 4]) == MAGIC
    try:
        with open(data, "rb") as fh:
            head = fh.read(PREAMBLE + 4)
    except OSError:
        return False
    return head[PREAMBLE:] == MAGIC


def read_dataset(data: bytes | Path, role: str = "image", error: type[Exception] = InvalidImageError):
    """Parse a DICOM Part 10 file (pixel data not decoded yet); a damaged file is ``error``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = io.BytesIO(bytes(data)) if isinstance(data, bytes | bytearray | memoryview) else Path(data)
    try:
        return pydicom.dcmread(source)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise error(f"{role}: cannot be read as DICOM ({type(exc).__name__})") from exc


def _check_header(ds: Dataset, role: str, limit: int, min_side: int, error: type[Exception]) -> None:
    from models.data.images import check_size

    if "PixelData" not in ds:
        raise error(f"{role}: the DICOM object holds no image (no Pixel Data)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and ds.get("SOPClassUID") != SEG_SOP_CLASS:
        raise error(f"{role}: a multi-frame DICOM ({frames} frames) is not accepted: send one frame")
    check_size(int(ds.Columns), int(ds.Rows), role, limit, min_side)


def _pixels(ds: Dataset, role: str, error: type[Exception]) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise error(
            f"{role}: DICOM pixel data in {name} cannot be decoded here ({type(exc).__name__})"
        ) from exc
    except (ValueError, AttributeError, KeyError, TypeError, OSError) as exc:
        raise error(f"{role}: DICOM pixel data is truncated or corrupt ({type(exc).__name__})") from exc


def _first(value) -> float:
    """A possibly multi-valued DS: its first value."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's LINEAR VOI window (PS3.3 C.11.2.1.2.1) onto 0..255."""
    width = max(width, 1.0)
    if width == 1.0:
        return np.where(values <= center - 0.5, 0.0, 255.0)
    return np.clip(((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0, 0.0, 255.0)


def _to_uint8(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """The module's pixel rule: one frame -> (H, W, 3) uint8."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        if rgb.dtype != np.uint8:  # palettes are 8 or 16 bits per entry
            rgb = (rgb.astype(np.float64) / (65535.0 if rgb.max() > 255 else 255.0) * 255.0).round()
        return np.clip(rgb, 0, 255).astype(np.uint8)
    if pixels.ndim == 3:  # RGB (YBR already converted to RGB by pydicom)
        if bits > 8 or pixels.dtype != np.uint8:
            top = float(2**bits - 1)
            pixels = np.clip(pixels.astype(np.float64) / top * 255.0, 0, 255).round()
        return pixels.astype(np.uint8)
    grey = pixels
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if bits <= 8 and not signed and "RescaleSlope" not in ds and grey.dtype == np.uint8:
        out = grey
    else:
        values = apply_modality_lut(grey, ds).astype(np.float64)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            out = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
        else:
            if "VOILUTSequence" in ds:
                values = apply_voi_lut(values, ds, index=0).astype(np.float64)
            low, high = float(values.min()), float(values.max())
            out = np.zeros(values.shape) if high <= low else (values - low) / (high - low) * 255.0
        out = np.clip(out.round(), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return np.repeat(out[:, :, None], 3, axis=2)


def decode_dicom_image(data: bytes | Path, *, max_pixels: int, min_side: int, role: str) -> np.ndarray:
    """A single-frame DICOM image -> (H, W, 3) uint8 RGB (the module's pixel rule)."""
    ds = read_dataset(data, role)
    if ds.get("SOPClassUID") == SEG_SOP_CLASS:
        raise InvalidImageError(f"{role}: a DICOM SEG is a mask, not an image")
    _check_header(ds, role, max_pixels, min_side, InvalidImageError)
    return np.ascontiguousarray(_to_uint8(ds, _pixels(ds, role, InvalidImageError)))


def decode_dicom_mask(data: bytes | Path, *, max_pixels: int, min_side: int, role: str) -> np.ndarray:
    """A DICOM SEG (union of its segments) or a single-frame DICOM image (grey > 127) -> (H, W) bool."""
    ds = read_dataset(data, role, InvalidMaskError)
    _check_header(ds, role, max_pixels, min_side, InvalidMaskError)
    pixels = _pixels(ds, role, InvalidMaskError)
    if ds.get("SOPClassUID") == SEG_SOP_CLASS:
        frames = pixels.reshape(-1, int(ds.Rows), int(ds.Columns))
        if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
            return (frames > int(ds.get("MaximumFractionalValue", 255)) / 2).any(axis=0)
        return (frames > 0).any(axis=0)
    return _to_uint8(ds, pixels)[:, :, 0] > 127


# -- out ---------------------------------------------------------------------------------------------

#: Patient and study attributes copied from the source (the new series joins the source's study).
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
#: Type 2 attributes written empty when the source lacks them.
TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def synthetic_description(model_version: str, seed: int) -> str:
    return f"SYNTHETIC lesionsynth model {model_version} seed {seed}"


def write_synthetic_dicom(
    source: Dataset,
    synthetic_rgb: np.ndarray,
    model_version: str,
    seed: int,
    *,
    series_uid: str | None = None,
    series_number: int = 9001,
    instance_number: int = 1,
    source_sha256: str = "",
) -> Dataset:
    """A synthetic image as a Secondary Capture instance of a new series in ``source``'s study.

    New SOP/Series UIDs (pass ``series_uid`` to put several images in one series), ImageType
    DERIVED\\SECONDARY, ConversionType SYN, SeriesDescription/DerivationDescription/ImageComments saying
    SYNTHETIC with the model version and seed, the source in SourceImageSequence, BurnedInAnnotation NO.
    Returns the dataset (with file meta); save it with :func:`dataset_bytes`.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    image = np.ascontiguousarray(synthetic_rgb, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"synthetic image must be (H, W, 3) uint8, got {image.shape}")
    ds = Dataset()
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    for keyword in PATIENT_STUDY:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)
    for keyword in TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    stamp = datetime.now(UTC)
    ds.SOPClassUID = SC_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.Modality = source.get("Modality", "OT") or "OT"
    ds.Laterality = source.get("Laterality", "")  # type 2C: dciodvfy wants it, empty when unknown
    description = synthetic_description(model_version, seed)
    ds.SeriesDescription = description[:64]
    ds.DerivationDescription = (
        f"{description}: a lesion painted by a diffusion model into the masked region of the source image"
        + (f"; source sha256 {source_sha256}" if source_sha256 else "")
    )
    ds.ImageComments = "SYNTHETIC image, not a real acquisition: not for diagnosis. " + description
    ds.ImageType = SYNTHETIC_IMAGE_TYPE
    ds.ConversionType = "SYN"  # SC Equipment: synthetic image
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = model_version[:64]
    ds.ContentDate = stamp.strftime("%Y%m%d")
    ds.ContentTime = stamp.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime
    ds.PatientOrientation = source.get("PatientOrientation", "") or ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = Sequence([ref])
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = image.tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\0" * PREAMBLE
    return ds


DESCRIPTION = re.compile(r"SYNTHETIC lesionsynth model (\S+) seed (\d+)")
SOURCE = re.compile(r"source sha256 ([0-9a-f]{64})")


def dicom_provenance(data: bytes | Path):
    """The :class:`~models.provenance.Provenance` of a synthetic DICOM we wrote, else None."""
    from models.provenance import Provenance

    try:
        ds = read_dataset(data)
    except InvalidImageError:
        return None
    text = str(ds.get("DerivationDescription", ""))
    found = DESCRIPTION.search(text)
    if "DERIVED" not in list(ds.get("ImageType", [])) or found is None:
        return None
    source = SOURCE.search(text)
    return Provenance(found.group(1), int(found.group(2)), source.group(1) if source else "")


def dataset_bytes(ds: Dataset) -> bytes:
    """A dataset as DICOM Part 10 bytes (preamble, file meta, explicit VR little endian)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_mask_seg(
    image: Dataset,
    mask: np.ndarray,
    model_version: str,
    seed: int,
    *,
    series_uid: str | None = None,
    instance_number: int = 1,
    description: str | None = None,
) -> Dataset:
    """``mask`` (H, W bool) as a BINARY DICOM SEG (highdicom) of ``image``, in its study, referencing it.

    For a synthetic image (the default description, "mask of SYNTHETIC ..."): where the lesion was
    painted. ``description`` names another use (e.g. a person's lesion annotation of a real image); pass
    ``series_uid`` to put several masks in one series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    synthetic = image
    if mask.shape != (int(synthetic.Rows), int(synthetic.Columns)):
        raise InvalidMaskError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
            f"{synthetic.Columns}x{synthetic.Rows}; they must be the same size"
        )
    if description is None:
        description = f"mask of {synthetic_description(model_version, seed)}"
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion region",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )  # MANUAL: the region is the user's (or a proposal's) mask, not the model's output
    seg = hd.seg.Segmentation(
        source_images=[synthetic],
        pixel_array=mask.astype(np.uint8)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_uid or generate_uid(),
        series_number=int(synthetic.SeriesNumber) + 1,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="lesionsynth",
        software_versions=model_version[:64],
        device_serial_number="0",
        series_description=description[:64],
    )
    if "PatientOrientation" not in seg:  # General Image type 2C for a SEG without a frame of reference
        seg.PatientOrientation = synthetic.get("PatientOrientation", "")
    return seg
