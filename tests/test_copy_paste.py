"""The copy-paste control: real train lesion regions pasted where a synthesizer would paint."""

import numpy as np
import pytest
import torch

from models.data.manifest import load_manifest
from models.diffusion.config import SynthesizerConfig
from models.diffusion.copy_paste import CopyPasteInpainter
from models.errors import ConfigError
from models.experiment.config import load_config
from models.experiment.prepare import copy_paste_inpainter, prepare, prepare_split
from tests.conftest import experiment_yaml

AT_32 = SynthesizerConfig(resolution=32)


@pytest.fixture(scope="module")
def control(demo_manifest):
    lesions = load_manifest(demo_manifest).rows_in("train", "lesion")
    return CopyPasteInpainter.from_rows(lesions, AT_32), lesions


def test_it_changes_only_the_editable_region_and_is_deterministic(control, demo_manifest):
    inpainter, lesions = control
    image, mask = load_manifest(demo_manifest).rows_in("train", "normal")[0].load()
    a, b = inpainter.inpaint_batch([image, image], [mask, mask], [3, 3])
    assert np.array_equal(a, b)
    outside = ~inpainter.editable_region(mask)
    assert np.array_equal(a[outside], image[outside]) and (a[mask] != image[mask]).any()
    others = {inpainter.inpaint(image, mask, seed=s)[mask].tobytes() for s in range(12)}
    assert len(others) > 1  # seeds pick different regions / orientations
    again = CopyPasteInpainter.from_rows(lesions, AT_32)
    assert again.model_version == inpainter.model_version and inpainter.model_version.startswith("copypaste-")
    assert CopyPasteInpainter.from_rows(lesions[1:], AT_32).model_version != inpainter.model_version


def test_the_pasted_region_is_a_real_train_lesion_crop(control):
    inpainter, _ = control
    x0 = np.zeros((1, 3, 32, 32), np.float32)
    ones = torch.ones(1, 1, 32, 32)
    crop = inpainter.sample_crops(torch.from_numpy(x0), ones, [7])[0]
    candidates = [
        torch.rot90(c.flip(-1) if f else c, k, (-2, -1))
        for c in inpainter.crops.images
        for f in (False, True)
        for k in range(4)
    ]
    assert any(torch.equal(crop, c) for c in candidates)


def config_path(tmp_path, demo_manifest, synthesizer):
    return experiment_yaml(
        tmp_path,
        demo_manifest,
        synthesizer=synthesizer,
        balance={"count": 3},
        classifier={"arch": "resnet18", "image_size": 32},
    )


def test_an_experiment_balances_with_the_control_and_trains_no_synthesizer(tmp_path, demo_manifest):
    config = load_config(config_path(tmp_path, demo_manifest, {"copy_paste": True, "resolution": 32}))
    prepared = prepare(config, progress=False)
    assert prepared.synthesizer is None and not (config.out / "synthesizer").exists()
    synthetic = [r for r in load_manifest(prepared.manifest).rows if r.fields.get("synthetic") == "1"]
    assert len(synthetic) == 3 and all(r.fields["model_version"].startswith("copypaste-") for r in synthetic)
    rows = {r.number: r for r in load_manifest(prepare_split(config, progress=False)).rows}
    pasted = copy_paste_inpainter(config, prepare_split(config, progress=False)).crops.rows
    assert pasted and all(rows[n].split == "train" and rows[n].label == "lesion" for n in pasted)


def test_the_control_takes_no_synthesizer_settings(tmp_path, demo_manifest):
    with pytest.raises(ConfigError, match="copy_paste"):
        load_config(config_path(tmp_path, demo_manifest, {"copy_paste": True, "max_steps": 10}))
