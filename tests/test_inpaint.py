"""The inpainting contract: identity outside the dilated mask, change inside, determinism, clear errors."""

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from models.data.images import decode_image, encode_png
from models.diffusion.inpaint import LesionInpainter
from models.errors import InvalidImageError, InvalidMaskError, ModelFolderError, ParameterError
from tests.conftest import rgb


def test_outside_the_dilated_mask_is_bit_identical(inpainter, normal_pair):
    image, mask = normal_pair
    out = inpainter.inpaint(image, mask, seed=3)
    region = inpainter.editable_region(mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~region], image[~region])
    # The editable region is the mask grown by at most the feather width, nothing wider.
    _, feather = inpainter.region(mask)
    assert region[mask].all()
    assert not (region & ~ndimage.binary_dilation(mask, iterations=feather + 1)).any()


def test_the_masked_region_changes(inpainter, normal_pair):
    image, mask = normal_pair
    out = inpainter.inpaint(image, mask, seed=0, strength=1.0)
    diff = np.abs(out.astype(int) - image.astype(int)).sum(-1)
    assert (diff[mask] > 0).mean() > 0.9
    assert diff[mask].mean() > 10


def test_same_seed_same_output_and_seeds_differ(inpainter, normal_pair):
    image, mask = normal_pair
    a = inpainter.inpaint(image, mask, seed=11)
    b = inpainter.inpaint(image, mask, seed=11)
    c = inpainter.inpaint(image, mask, seed=12)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int))[mask].mean() > 1


def test_batch_matches_single_calls(inpainter, demo_manifest):
    from models.data.manifest import load_manifest

    rows = load_manifest(demo_manifest, check_files=False).rows_in("train", "normal")[:3]
    pairs = [r.load() for r in rows]
    batch = inpainter.inpaint_batch([p[0] for p in pairs], [p[1] for p in pairs], [5, 6, 7])
    for (image, mask), seed, out in zip(pairs, [5, 6, 7], batch, strict=True):
        single = inpainter.inpaint(image, mask, seed=seed)
        # Same seed, same result; batch composition can move a UNet float by ~1e-6, so allow 1 grey level.
        assert np.abs(single.astype(int) - out.astype(int)).max() <= 1


def test_strength_controls_how_much_of_the_source_survives(inpainter, normal_pair):
    image, mask = normal_pair
    weak = inpainter.inpaint(image, mask, seed=1, strength=0.1)
    strong = inpainter.inpaint(image, mask, seed=1, strength=1.0)
    change = lambda out: np.abs(out.astype(int) - image.astype(int))[mask].mean()  # noqa: E731
    assert change(weak) < change(strong)


def test_masks_touching_the_border_and_odd_sizes(inpainter):
    image = rgb(37, 53, seed=2)
    mask = np.zeros((37, 53), dtype=bool)
    mask[0:12, 40:53] = True  # the square region box leaves the image
    out = inpainter.inpaint(image, mask, seed=0)
    region = inpainter.editable_region(mask)
    np.testing.assert_array_equal(out[~region], image[~region])
    assert (out[mask] != image[mask]).any()
    one_pixel = np.zeros((37, 53), dtype=bool)
    one_pixel[20, 20] = True
    out = inpainter.inpaint(image, one_pixel, seed=0)
    np.testing.assert_array_equal(
        out[~inpainter.editable_region(one_pixel)], image[~inpainter.editable_region(one_pixel)]
    )


def test_bad_inputs_raise_clear_errors(inpainter):
    image = rgb(32, 32)
    with pytest.raises(InvalidMaskError, match="empty"):
        inpainter.inpaint(image, np.zeros((32, 32), bool))
    with pytest.raises(InvalidMaskError, match="mask is 31x32 but the image is 32x32"):
        inpainter.inpaint(image, np.ones((32, 31), bool))
    with pytest.raises(ParameterError, match="steps"):
        inpainter.inpaint(image, np.ones((32, 32), bool), steps=0)
    with pytest.raises(ParameterError, match="steps"):
        inpainter.inpaint(image, np.ones((32, 32), bool), steps=10_000)
    with pytest.raises(ParameterError, match="strength"):
        inpainter.inpaint(image, np.ones((32, 32), bool), strength=1.5)
    with pytest.raises(ParameterError, match="seed"):
        inpainter.inpaint(image, np.ones((32, 32), bool), seed=-1)
    with pytest.raises(InvalidImageError, match="not a supported image"):
        decode_image(b"GIF89a not really")
    with pytest.raises(InvalidImageError, match="over the limit"):
        decode_image(encode_png(image), max_pixels=100)


def test_model_folder_errors(tmp_path, tiny_synth):
    with pytest.raises(ModelFolderError, match="does not exist"):
        LesionInpainter.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="not a lesionsynth synthesizer"):
        LesionInpainter.from_pretrained(tmp_path / "empty")
    other = tmp_path / "other"
    shutil.copytree(tiny_synth, other, ignore=shutil.ignore_patterns("checkpoints"))
    card = json.loads((other / "model_card.json").read_text())
    (other / "model_card.json").write_text(json.dumps({**card, "kind": "classifier"}))
    with pytest.raises(ModelFolderError, match="not 'lesionsynth.synthesizer'"):
        LesionInpainter.from_pretrained(other)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_synth, corrupt, ignore=shutil.ignore_patterns("checkpoints"))
    weights = corrupt / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="fails its sha256 check"):
        LesionInpainter.from_pretrained(corrupt)


def test_sampler_settings_are_validated_and_counted():
    from models.diffusion.inpaint import DEFAULTS, SamplerSettings

    assert DEFAULTS.unet_calls == 6  # the default: 6 DPM-Solver++(2M) SDE steps from pure noise
    assert SamplerSettings(steps=25, strength=0.8, eta=0.0).unet_calls == 20
    assert SamplerSettings(steps=25, resample=2).unet_calls == 49
    assert SamplerSettings(strength=0.8).unet_calls == 5 and SamplerSettings(resample=2).unet_calls == 11
    for bad, needle in ((dict(eta=1.5), "eta"), (dict(resample=0), "resample"), (dict(steps=True), "steps")):
        with pytest.raises(ParameterError, match=needle):
            DEFAULTS.with_overrides(**bad)


def test_stochastic_and_resampled_sampling_stay_deterministic(inpainter, normal_pair):
    image, mask = normal_pair
    for kwargs in (dict(eta=1.0, resample=2), dict(eta=0.5, strength=0.6)):
        a = inpainter.inpaint(image, mask, seed=4, **kwargs)
        np.testing.assert_array_equal(a, inpainter.inpaint(image, mask, seed=4, **kwargs))
        region = inpainter.editable_region(mask)
        np.testing.assert_array_equal(a[~region], image[~region])
