"""A hospital pipeline against a real PACS: Orthanc (Debian's orthanc + orthanc-dicomweb) on free ports.

Upload a small study (lesion and normal images with SEG masks), read it over DICOMweb (QIDO-RS, WADO-RS),
balance it with the tiny synthesizer, store the synthetic series back (STOW-RS) and find it there marked
synthetic (ImageType DERIVED, SeriesDescription SYNTHETIC)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time

import httpx
import pytest
from dicom_samples import VL_PHOTOGRAPHIC, dataset, to_bytes

from services.harness import free_ports

ORTHANC = shutil.which("Orthanc")
PLUGINS = "/usr/share/orthanc/plugins"

pytestmark = [
    pytest.mark.skipif(
        ORTHANC is None, reason="Orthanc (Debian's orthanc + orthanc-dicomweb) is not installed"
    ),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    work = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_ports(2)
    config = {
        "Name": "lesionsynth-test",
        "StorageDirectory": str(work / "db"),
        "IndexDirectory": str(work / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [PLUGINS],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    with open(work / "orthanc.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([ORTHANC, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/dicom-web/studies", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (work / "orthanc.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Orthanc did not become ready (DicomWeb plugin missing?):\n{tail}")
            time.sleep(0.3)
        yield f"{url}/dicom-web"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def study(demo_manifest):
    """DICOM instances from the demo dataset's train rows: 3 lesion and 4 normal images, each with a SEG."""
    from pydicom.uid import generate_uid

    from models.data.dicom import dataset_bytes, write_mask_seg
    from models.data.manifest import load_manifest

    def seg(ds, mask):
        return write_mask_seg(ds, mask, "", 0, series_uid=seg_series, description="lesion annotation")

    manifest = load_manifest(demo_manifest, check_files=False)
    seg_series = generate_uid()
    study_uid, series_uid = generate_uid(), generate_uid()
    rows = manifest.rows_in("train", "lesion")[:3] + manifest.rows_in("train", "normal")[:4]
    instances = []
    for number, row in enumerate(rows, start=1):
        image, mask = row.load()
        ds = dataset(
            image,
            sop_class=VL_PHOTOGRAPHIC,
            modality="XC",
            study_uid=study_uid,
            series_uid=series_uid,
            instance=number,
            ImageComments=row.label,  # where this test keeps the label (a hospital: its records)
        )
        instances += [to_bytes(ds), dataset_bytes(seg(ds, mask))]
    return study_uid, instances


def test_read_balance_store_back_and_find_synthetic(orthanc, demo_manifest, tiny_synth, tmp_path):
    import pydicom
    from typer.testing import CliRunner

    from lesionsynth.cli import app
    from lesionsynth.dicomweb import SERIES_DESCRIPTION, SERIES_UID, DicomWebClient, synthetic_series, value
    from models.balance import BalanceSettings, balance_dataset
    from models.data.manifest import load_manifest
    from models.provenance import read_provenance

    study_uid, instances = study(demo_manifest)
    with DicomWebClient(orthanc) as client:
        client.store(instances)
        assert [value(s, "0020000D") for s in client.search_studies()] == [study_uid]

        folder = tmp_path / "study"
        fetch = ["dicomweb", "fetch", "--url", orthanc, "--study", study_uid, "--out", str(folder)]
        result = CliRunner().invoke(app, [*fetch, "--label-keyword", "ImageComments"])
        assert result.exit_code == 0, result.output
        assert len(list(folder.glob("*.dcm"))) == len(instances)
        manifest = folder / "manifest.csv"
        assert sorted(r.label for r in load_manifest(manifest).rows) == ["lesion"] * 3 + ["normal"] * 4
        out = tmp_path / "balanced"
        settings = dict(normal_label="normal", lesion_label="lesion", count=2, steps=2, seed=0)
        balanced = balance_dataset(
            BalanceSettings(manifest=manifest, model=tiny_synth, out=out, progress=False, **settings)
        )
        assert all(read_provenance(p) is not None for p in (out / "synthetic").glob("*.png"))

        assert len(synthetic_series(balanced)) == 4  # 2 synthetic images + their SEGs
        store = ["dicomweb", "store-synthetic", "--url", orthanc, "--manifest", str(balanced)]
        result = CliRunner().invoke(app, store)
        assert result.exit_code == 0 and "stored 4 instances" in result.output, result.output

        series = client.search_series(study_uid, includefield="all")
        synthetic = [s for s in series if "SYNTHETIC" in (value(s, SERIES_DESCRIPTION) or "")]
        assert len(series) == 4  # the source images and their annotations, the synthetic images and masks
        assert len(synthetic) == 2  # the synthetic images' series and their masks' series
        images = [s for s in synthetic if value(s, "00080060") != "SEG"]
        assert len(images) == 1
        found = client.search_instances(study_uid, value(images[0], SERIES_UID), includefield="all")
        assert len(found) == 2
        for item in found:
            data = client.retrieve_instance(study_uid, value(images[0], SERIES_UID), value(item, "00080018"))
            made = read_provenance(data)
            assert made is not None and made.model_version and made.seed >= 0
            assert "DERIVED" in pydicom.dcmread(io.BytesIO(data)).ImageType
        assert len(client.search_studies()) == 1  # the synthetic series joined the source's study
