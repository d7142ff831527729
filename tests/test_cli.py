"""The command line: each command end to end, and every user error gives exit 2, a message, no output."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lesionsynth.cli import app
from models.data.images import encode_png

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_demo_split_train_synthesize_balance(tmp_path):
    data = tmp_path / "data"
    result = run("data", "demo", data, "--n-lesion", 6, "--n-normal", 10, "--size", 32)
    assert result.exit_code == 0, result.output
    manifest = data / "manifest.csv"
    result = run("data", "split", "--manifest", manifest, "--test-fraction", 0.2, "--val-fraction", 0.2)
    assert result.exit_code == 0, result.output
    assert "train lesion" in " ".join(result.output.split())
    assert run("data", "check", "--manifest", manifest, "--labels", "lesion,normal").exit_code == 0
    again = run("data", "split", "--manifest", manifest)
    assert again.exit_code == 2 and "already has a 'split' column" in again.output

    model = tmp_path / "model"
    result = run(
        "train-synthesizer",
        "--manifest",
        manifest,
        "--lesion-label",
        "lesion",
        "--out",
        model,
        "--resolution",
        32,
        "--preset",
        "tiny",
        "--max-steps",
        4,
        "--batch-size",
        2,
    )
    assert result.exit_code == 0, result.output
    assert "model version" in result.output

    img, msk = data / "images" / "demo_0000.png", data / "masks" / "demo_0000.png"
    out = tmp_path / "out.png"
    result = run(
        "synthesize", "--model", model, "--image", img, "--mask", msk, "--out", out, "--seed", 3, "--steps", 5
    )
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)

    result = run(
        "balance",
        "--manifest",
        manifest,
        "--model",
        model,
        "--normal-label",
        "normal",
        "--lesion-label",
        "lesion",
        "--count",
        2,
        "--out",
        tmp_path / "bal",
        "--steps",
        3,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bal" / "manifest.csv").is_file()

    result = run(
        "grid",
        "--manifest",
        manifest,
        "--model",
        model,
        "--label",
        "normal",
        "--out",
        tmp_path / "grid.png",
        "--n-images",
        2,
        "--seeds",
        "0,1",
        "--steps",
        3,
        "--reference-label",
        "lesion",
    )
    assert result.exit_code == 0, result.output
    width, height = Image.open(tmp_path / "grid.png").size
    assert width > 200 and height > width * 2 / 4  # 2 source rows + 1 reference row over 4 columns


@pytest.fixture()
def pair(tmp_path):
    img = np.full((24, 24, 3), 100, np.uint8)
    mask = np.zeros((24, 24), np.uint8)
    mask[8:16, 8:16] = 255
    (tmp_path / "img.png").write_bytes(encode_png(img))
    (tmp_path / "mask.png").write_bytes(encode_png(mask))
    return tmp_path / "img.png", tmp_path / "mask.png"


@pytest.mark.parametrize(
    "case, needle",
    [
        ("empty_mask", "mask is empty"),
        ("size_mismatch", "mask is 20x24 but the image is 24x24"),
        ("not_an_image", "not a supported image"),
        ("missing_model", "model folder does not exist"),
        ("not_a_synthesizer", "not a lesionsynth synthesizer"),
        ("too_many_pixels", "over the limit"),
        ("bad_strength", "strength must be in (0, 1]"),
    ],
)
def test_synthesize_errors_write_nothing(tmp_path, pair, tiny_synth, case, needle, monkeypatch):
    img, msk = pair
    model = tiny_synth
    if case == "empty_mask":
        msk.write_bytes(encode_png(np.zeros((24, 24), np.uint8)))
    elif case == "size_mismatch":
        msk.write_bytes(encode_png(np.full((24, 20), 255, np.uint8)))
    elif case == "not_an_image":
        img.write_bytes(b"hello, I am text")
    elif case == "missing_model":
        model = tmp_path / "nothing-here"
    elif case == "not_a_synthesizer":
        model = tmp_path / "plain"
        model.mkdir()
    elif case == "too_many_pixels":
        monkeypatch.setenv("LESIONSYNTH_MAX_PIXELS", "100")
    extra = ["--strength", "1.5"] if case == "bad_strength" else []
    out = tmp_path / "result.png"
    result = run("synthesize", "--model", model, "--image", img, "--mask", msk, "--out", out, *extra)
    assert result.exit_code == 2
    assert needle in " ".join(result.output.split())
    assert not out.exists()


def test_console_script_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lesionsynth.cli", "data", "check", "--manifest", tmp_path / "absent.csv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "manifest not found" in proc.stderr


def test_class_conditional_train_and_guided_synthesis(tmp_path, demo_manifest):
    runner = CliRunner()
    model = tmp_path / "cond"
    args = [
        "train-synthesizer",
        "--manifest",
        str(demo_manifest),
        "--lesion-label",
        "lesion",
        "--out",
        str(model),
    ]
    args += [
        "--resolution",
        "32",
        "--preset",
        "tiny",
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    result = runner.invoke(app, [*args, "--num-classes", "2"])
    assert result.exit_code == 2 and "needs --normal-label" in result.output
    result = runner.invoke(app, [*args, "--num-classes", "2", "--normal-label", "normal"])
    assert result.exit_code == 0, result.output
    from models.data.manifest import load_manifest

    row = load_manifest(demo_manifest).rows_in("train", "normal")[0]
    out = tmp_path / "guided.png"
    synth = [
        "synthesize",
        "--image",
        str(row.image_file),
        "--mask",
        str(row.mask_file),
        "--model",
        str(model),
    ]
    result = runner.invoke(app, [*synth, "--out", str(out), "--steps", "3", "--guidance", "2.5"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == Image.open(row.image_file).size
    result = runner.invoke(app, [*synth, "--out", str(tmp_path / "x.png"), "--guidance", "99"])
    assert result.exit_code == 2 and "guidance must be in [0, 20]" in result.output
