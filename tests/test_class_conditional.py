"""The class-conditional synthesizer (issue 11, variant 1): one UNet on the regions of both classes with a
null class (label dropout), sampled toward the lesion class with classifier-free guidance."""

import numpy as np
import pytest
import torch
from PIL import Image

from models.data.manifest import load_manifest
from models.diffusion.config import SynthesizerConfig, build_unet
from models.diffusion.crops import LesionCrops
from models.diffusion.folder import load_synthesizer
from models.diffusion.inpaint import LesionInpainter
from models.diffusion.sampler_settings import SamplerSettings
from models.diffusion.train import drop_labels, train_synthesizer
from models.errors import ConfigError, ParameterError
from tests.conftest import tiny_settings

SIZE = 32


def toy_manifest(folder, n_per_class=12, seed=0):
    """Grey skin with a disc in the middle: red discs are 'lesion', blue discs 'normal'. The only thing
    that tells the classes apart is the disc's colour, so a sampler that carries the class must paint red."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    lines = ["image_path,mask_path,label,split"]
    for i in range(2 * n_per_class):
        label = "lesion" if i % 2 else "normal"
        r = rng.integers(7, 11)
        cy, cx = rng.integers(12, 20, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = np.full((SIZE, SIZE, 3), 170.0) + rng.normal(0, 6, (SIZE, SIZE, 3))
        colour = (200, 50, 50) if label == "lesion" else (50, 50, 200)
        image[disc] = np.array(colour) + rng.normal(0, 10, (disc.sum(), 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(folder / f"mask{i}.png")
        lines.append(f"img{i}.png,mask{i}.png,{label},train")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def conditional_synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    manifest = toy_manifest(root / "data")
    out = root / "model"
    train_synthesizer(
        tiny_settings(
            manifest,
            out,
            resolution=SIZE,
            num_classes=2,
            margin=0.1,
            normal_label="normal",
            label_dropout=0.2,
            max_steps=400,
            batch_size=8,
            learning_rate=2e-3,
            warmup_steps=20,
            checkpoint_every=200,
        )
    )
    return out, manifest


def redness(crops: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Mean (R - B) inside each crop's mask, crops (B, 3, R, R) in [-1, 1]: > 0 red, < 0 blue."""
    diff = (crops[:, 0] - crops[:, 2]) * masks[:, 0]
    return (diff.flatten(1).sum(1) / masks.flatten(1).sum(1)).numpy()


def test_guidance_toward_the_lesion_class_paints_its_colour(conditional_synth):
    folder, manifest = conditional_synth
    inpainter = LesionInpainter.from_pretrained(folder, device="cpu")
    normals = load_manifest(manifest).rows_in("train", "normal")[:8]
    crops = LesionCrops.from_rows(normals, SIZE, 0.1)
    seeds = list(range(8))
    by_scale = {
        g: redness(
            inpainter.sample_crops(crops.images, crops.masks, seeds, SamplerSettings(guidance=g)), crops.masks
        )
        for g in (0.0, 1.0, 3.0)
    }
    # Unguided (the null class: what both classes share) paints red and blue alike; the lesion class red.
    assert by_scale[1.0].mean() > by_scale[0.0].mean() + 0.2
    assert (by_scale[3.0] > 0).mean() >= 0.75
    assert by_scale[3.0].mean() > by_scale[0.0].mean() + 0.3
    # A guided step is one UNet call of twice the batch, counted once.
    before = inpainter.unet_calls
    inpainter.sample_crops(crops.images[:2], crops.masks[:2], [0, 1], SamplerSettings(guidance=3.0))
    assert inpainter.unet_calls - before == SamplerSettings().unet_calls


def test_conditional_folder_round_trips_and_loads_in_diffusers(conditional_synth):
    from diffusers import UNet2DModel

    folder, _ = conditional_synth
    loaded = load_synthesizer(folder)
    assert loaded.config.num_classes == 2 and loaded.config.null_class == 2
    assert loaded.card["regions_per_class"] == {"normal": 12, "lesion": 12}
    assert loaded.card["label_dropout"] == 0.2 and loaded.card["normal_label"] == "normal"
    unet = UNet2DModel.from_pretrained(folder / "unet")
    assert unet.config.num_class_embeds == 3
    x = torch.zeros(1, 3, SIZE, SIZE)
    with torch.no_grad():  # the null class and the lesion class give different predictions
        a = unet(x, 500, class_labels=torch.tensor([1])).sample
        b = unet(x, 500, class_labels=torch.tensor([2])).sample
    assert not torch.allclose(a, b)


def test_label_dropout_and_class_balanced_draws():
    g = torch.Generator().manual_seed(0)
    labels = torch.ones(20000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, null_class=2, generator=g)
    assert set(dropped.unique().tolist()) == {1, 2}
    assert abs((dropped == 2).float().mean().item() - 0.1) < 0.01
    assert torch.equal(drop_labels(labels[:5], 0.0, 2, g), labels[:5])
    # 3 lesion regions among 97 normal ones: drawn about half the time each, not 3% of it.
    crops = LesionCrops(
        torch.zeros(100, 3, 8, 8), torch.ones(100, 1, 8, 8), range(100), torch.tensor([1] * 3 + [0] * 97)
    )
    _, _, y = crops.sample(4000, torch.Generator().manual_seed(1), augment=False)
    assert abs(y.float().mean().item() - 0.5) < 0.03
    # Lesion-only crops (the paper's recipe) are all class 1 and drawn uniformly.
    plain = LesionCrops(torch.zeros(4, 3, 8, 8), torch.ones(4, 1, 8, 8), range(4))
    assert plain.sample(3, torch.Generator().manual_seed(0))[2].tolist() == [1, 1, 1]


def test_conditional_settings_errors(tmp_path, demo_manifest, tiny_synth):
    conditional = SynthesizerConfig(resolution=32, preset="tiny", num_classes=2)
    assert build_unet(conditional).config.num_class_embeds == 3
    assert build_unet(SynthesizerConfig(resolution=32, preset="tiny")).config.num_class_embeds is None
    with pytest.raises(ParameterError, match="num_classes must be one of 0, 2, got 3"):
        SynthesizerConfig(num_classes=3)
    with pytest.raises(ConfigError, match="needs --normal-label"):
        tiny_settings(demo_manifest, tmp_path / "a", num_classes=2)
    with pytest.raises(ParameterError, match=r"label_dropout must be in \(0, 1\], got 0.0"):
        tiny_settings(demo_manifest, tmp_path / "b", num_classes=2, normal_label="normal", label_dropout=0.0)
    with pytest.raises(ConfigError, match="label-dropout must be in"):
        tiny_settings(demo_manifest, tmp_path / "b", num_classes=2, normal_label="normal", label_dropout=1.0)
    # An unconditional synthesizer (every existing folder) refuses guidance instead of ignoring it.
    inpainter = LesionInpainter.from_pretrained(tiny_synth, device="cpu")
    row = load_manifest(demo_manifest).rows_in("train", "normal")[0]
    image, mask = row.load()
    with pytest.raises(ParameterError, match="needs a class-conditional synthesizer"):
        inpainter.inpaint(image, mask, guidance=2.0)
    with pytest.raises(ParameterError, match="guidance must be in"):
        inpainter.inpaint(image, mask, guidance=-1.0)
    assert inpainter.inpaint(image, mask, steps=2, guidance=1.0).shape == image.shape
