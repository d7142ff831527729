"""Small DICOM objects made in the tests (no patient data: invented names and UIDs)."""

from __future__ import annotations

import numpy as np

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def dataset(
    pixels: np.ndarray,
    *,
    photometric: str | None = None,
    bits: int = 8,
    study_uid: str | None = None,
    sop_class: str = SECONDARY_CAPTURE,
    modality: str = "OT",
    patient_id: str = "TEST-0001",
    series_uid: str | None = None,
    instance: int = 1,
    **extra,
):
    """An uncompressed (explicit VR little endian) single-frame dataset holding ``pixels``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, instance
    ds.ConversionType = "WSD"
    ds.PatientOrientation = ""
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    colour = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    dtype = np.uint8 if bits <= 8 else np.uint16
    ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    return ds


def to_bytes(ds) -> bytes:
    from models.data.dicom import dataset_bytes

    return dataset_bytes(ds)


def jpeg_baseline(rgb: np.ndarray, **kwargs):
    """``rgb`` JPEG-compressed by Pillow (YBR_FULL_422), encapsulated as JPEG Baseline (1.2.840.10008.1.2.4.50)."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    ds = dataset(rgb, **kwargs)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds, np.asarray(Image.open(buf).convert("RGB"))
