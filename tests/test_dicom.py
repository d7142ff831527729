"""DICOM in: decode_image/decode_mask accept DICOM (uncompressed, JPEG baseline, JPEG 2000, RLE; grey,
MONOCHROME1, RGB, YBR; >8-bit windowing), with the same limits and messages as other formats; SEG masks."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from dicom_samples import DX, VL_PHOTOGRAPHIC, dataset, jpeg_baseline, to_bytes

from models.data.images import decode_image, decode_mask
from models.errors import InvalidImageError, InvalidMaskError

pydicom = pytest.importorskip("pydicom")


def rgb(h=40, w=48, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_uncompressed_rgb_and_grey():
    image = rgb()
    assert (decode_image(to_bytes(dataset(image))) == image).all()
    grey = image[:, :, 0]
    out = decode_image(to_bytes(dataset(grey)))
    assert out.shape == (40, 48, 3) and (out == grey[:, :, None]).all()


def test_monochrome1_is_inverted():
    grey = rgb()[:, :, 1]
    out = decode_image(to_bytes(dataset(grey, photometric="MONOCHROME1")))
    assert (out[:, :, 0] == 255 - grey).all()


def test_over_8_bits_uses_the_window_else_the_range():
    values = np.linspace(0, 4095, 40 * 48).reshape(40, 48).astype(np.uint16)
    plain = decode_image(to_bytes(dataset(values, bits=12, sop_class=DX, modality="DX")))
    assert plain[0, 0, 0] == 0 and plain[-1, -1, 0] == 255  # min..max -> 0..255
    assert np.all(np.diff(plain[:, :, 0].ravel().astype(int)) >= 0)
    windowed = decode_image(
        to_bytes(dataset(values, bits=12, sop_class=DX, modality="DX", WindowCenter=1024, WindowWidth=512))
    )
    flat = windowed[:, :, 0].ravel()
    below, above = values.ravel() < 768, values.ravel() > 1280
    assert (flat[below] == 0).all() and (flat[above] == 255).all()  # outside the window: clipped


def test_jpeg_baseline_ybr_decodes_to_rgb():
    image = (np.indices((64, 64)).sum(axis=0) * 2 % 256).astype(np.uint8)
    image = np.stack([image, 255 - image, np.full_like(image, 90)], axis=2)
    ds, expected = jpeg_baseline(image)
    out = decode_image(to_bytes(ds))
    assert out.shape == image.shape
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 8  # two JPEG decoders


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "RLELossless"])
def test_lossless_compressed(syntax):
    import pydicom.uid

    image = rgb(32, 40, seed=3)
    ds = dataset(image)
    ds.compress(getattr(pydicom.uid, syntax))
    assert (decode_image(to_bytes(ds)) == image).all()


def pydicom_file(name: str):
    """One of the DICOM files pydicom ships for its own tests (made by dcmtk, GDCM, ...)."""
    from pathlib import Path

    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def test_files_from_other_toolkits_decode_by_the_same_rule():
    """Real encoders' output: lossless syntaxes give the same pixels, lossy ones nearly; others decode."""
    rgb = decode_image(pydicom_file("SC_rgb_rle.dcm"))  # RLE, RGB
    same = {"SC_rgb_jpeg_gdcm.dcm": 0, "SC_rgb_dcmtk_+eb+cr.dcm": 1}  # JPEG lossless (process 14); baseline
    near = {"SC_rgb_jpeg_dcmtk.dcm": 8, "SC_ybr_full_422_uncompressed.dcm": 8}  # baseline YBR_FULL; YBR 4:2:2
    for name, tolerance in {**same, **near}.items():
        assert np.abs(decode_image(pydicom_file(name)).astype(int) - rgb).max() <= tolerance, name
    grey = decode_image(pydicom_file("MR_small.dcm"))  # 16-bit MONOCHROME2
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):  # RLE, JPEG 2000 lossless
        assert (decode_image(pydicom_file(name)) == grey).all(), name
    for name in ("CT_small.dcm", "JPGExtended.dcm", "JPEG2000.dcm", "examples_palette.dcm"):
        out = decode_image(pydicom_file(name))  # signed 16-bit CT; 12-bit JPEG extended; palette
        assert out.dtype == np.uint8 and out.ndim == 3 and out.max() > out.min(), name
    with pytest.raises(InvalidImageError, match=r"multi-frame DICOM \(2 frames\)"):
        decode_image(pydicom_file("SC_rgb_rle_2frame.dcm"))


def test_limits_and_refusals_read_like_other_formats(tmp_path):
    data = to_bytes(dataset(rgb(100, 100)))
    with pytest.raises(InvalidImageError, match="100x100 = 10,000 pixels is over the limit of 9,999"):
        decode_image(data, max_pixels=9_999)
    with pytest.raises(InvalidImageError, match="under the minimum of 128 pixels per side"):
        decode_image(data, min_side=128)
    with pytest.raises(InvalidImageError, match="image: DICOM pixel data is truncated or corrupt"):
        decode_image(data[: len(data) - 500])
    multi = dataset(rgb(32, 32))
    multi.NumberOfFrames = 2
    multi.PixelData = multi.PixelData * 2
    with pytest.raises(InvalidImageError, match=r"multi-frame DICOM \(2 frames\) is not accepted"):
        decode_image(to_bytes(multi))
    path = tmp_path / "study.dcm"
    path.write_bytes(data)
    assert decode_image(path).shape == (100, 100, 3)  # files (CLI, manifests) as well as bytes


def test_masks_from_a_dicom_image_and_a_seg():
    from models.data.dicom import write_mask_seg, write_synthetic_dicom

    mask = np.zeros((40, 48), bool)
    mask[10:30, 5:20] = True
    grey = np.where(mask, 255, 0).astype(np.uint8)
    assert (decode_mask(to_bytes(dataset(grey))) == mask).all()

    source = dataset(rgb())
    synthetic = write_synthetic_dicom(source, rgb(seed=1), "v1", 3)
    seg = write_mask_seg(synthetic, mask, "v1", 3)
    from models.data.dicom import dataset_bytes

    assert (decode_mask(dataset_bytes(seg)) == mask).all()
    with pytest.raises(InvalidImageError, match="a DICOM SEG is a mask, not an image"):
        decode_image(dataset_bytes(seg))
    with pytest.raises(InvalidMaskError, match="mask: the DICOM object holds no image"):
        decode_mask(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")


# -- out: a round trip through the CLI, validated by dciodvfy ---------------------------------------

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path) -> list[str]:
    """dciodvfy's "Error" lines (warnings are allowed: see the test)."""
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.lstrip().startswith("Error")]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian's dicom3tools) is not installed")
@pytest.mark.timeout(180)
def test_dicom_round_trip_through_the_cli_passes_dciodvfy(tmp_path, tiny_synth):
    from typer.testing import CliRunner

    from lesionsynth.cli import app
    from models.artifacts import sha256_file
    from models.provenance import read_provenance

    image = np.full((48, 48, 3), 140, np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[16:32, 16:32] = 255
    source = dataset(image, sop_class=VL_PHOTOGRAPHIC, modality="XC")
    (tmp_path / "source.dcm").write_bytes(to_bytes(source))
    (tmp_path / "mask.dcm").write_bytes(to_bytes(dataset(mask)))  # a mask as a DICOM image
    out = tmp_path / "synthetic.dcm"
    args = [
        "synthesize",
        "--image",
        tmp_path / "source.dcm",
        "--mask",
        tmp_path / "mask.dcm",
        "--model",
        tiny_synth,
    ]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--out", out, "--seed", 4, "--steps", 2]])
    assert result.exit_code == 0, result.output

    made = pydicom.dcmread(out)
    assert made.StudyInstanceUID == source.StudyInstanceUID and made.PatientID == source.PatientID
    assert made.SeriesInstanceUID != source.SeriesInstanceUID
    assert made.SOPInstanceUID != source.SOPInstanceUID
    assert list(made.ImageType) == ["DERIVED", "SECONDARY"] and made.ConversionType == "SYN"
    assert "SYNTHETIC" in made.SeriesDescription and "seed 4" in made.DerivationDescription
    assert made.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert made.BurnedInAnnotation == "NO"
    from models.diffusion.inpaint import LesionInpainter

    outside = ~LesionInpainter.from_pretrained(tiny_synth).editable_region(mask > 127)
    assert outside.any() and (decode_image(out)[outside] == image[outside]).all()
    assert read_provenance(out).seed == 4
    assert read_provenance(out).source_sha256 == sha256_file(tmp_path / "source.dcm")

    seg_path = tmp_path / "synthetic.seg.dcm"
    seg = pydicom.dcmread(seg_path)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == made.SOPInstanceUID
    assert (decode_mask(seg_path) == (mask > 127)).all()

    # Warnings allowed: dciodvfy warns that Laterality (General Series, type 2C) is empty, which is what
    # we write when the source does not say (unknown); the SEG gives no warnings.
    assert dciodvfy_errors(out) == []
    assert dciodvfy_errors(seg_path) == []


def test_dicomweb_multipart_and_an_unreachable_server():
    from typer.testing import CliRunner

    from lesionsynth.cli import app
    from lesionsynth.dicomweb import multipart_parts

    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--b1\r\nContent-Type: x\r\n\r\nTWO\r\n--b1--\r\n"
    assert multipart_parts(body, 'multipart/related; type="application/dicom"; boundary=b1') == [
        b"ONE",
        b"TWO",
    ]
    args = [
        "dicomweb",
        "store-synthetic",
        "--url",
        "http://127.0.0.1:9/dicom-web",
        "--manifest",
        "nothing.csv",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "error" in result.output
    from services.harness import free_ports

    [port] = free_ports(1)  # nothing listens there
    fetch = ["dicomweb", "fetch", "--url", f"http://127.0.0.1:{port}/dicom-web", "--study", "1.2.3"]
    result = CliRunner().invoke(app, [*fetch, "--out", "x", "--label-keyword", "ImageComments"])
    assert result.exit_code == 2 and "cannot reach the DICOMweb server" in result.output, result.output
