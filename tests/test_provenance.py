"""Synthetic provenance: PNG text chunks on every synthetic image (CLI, balance, the service handler) and
the append-only audit log (REST, gRPC, a balance job, the CLI); `lesionsynth provenance FILE`."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from lesionsynth.cli import app
from models.artifacts import sha256_bytes, sha256_file
from models.audit import AuditEntry, AuditLog, token_id
from models.data.images import decode_image, encode_png
from models.provenance import KEY_DESCRIPTION, Provenance, png_text, read_provenance

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def entry(**overrides) -> AuditEntry:
    values = dict(
        actor="local",
        source="cli",
        model_version="v1",
        seed=2**63 - 1,
        image_sha256="a" * 64,
        mask_sha256="b" * 64,
        output_sha256="c" * 64,
    )
    return AuditEntry.new(**{**values, **overrides})


def test_png_provenance_round_trip_and_real_images_have_none():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    made = Provenance("synth-1234", 42, "f" * 64)
    data = encode_png(image, provenance=made)
    assert read_provenance(data) == made
    assert png_text(data)["lesionsynth:synthetic"] == "true"
    assert png_text(data)[KEY_DESCRIPTION].startswith("SYNTHETIC")
    assert (decode_image(data) == image).all()  # the pixels are untouched
    assert read_provenance(encode_png(image)) is None
    assert read_provenance(b"not a png") is None


def test_audit_log_is_append_only(tmp_path):
    log = AuditLog(tmp_path / "audit.sqlite")
    log.record([entry(), entry(output_sha256="d" * 64, source="rest")])
    assert log.count() == 2
    found = log.find("c" * 64)
    assert len(found) == 1 and found[0].seed == 2**63 - 1 and found[0].source == "cli"
    db = sqlite3.connect(tmp_path / "audit.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE synthesis SET seed = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM synthesis")
    db.close()
    assert AuditLog(tmp_path / "audit.sqlite").count() == 2  # reopening keeps the rows
    with pytest.raises(ValueError, match="audit source"):
        log.record([entry(source="elsewhere")])


def test_token_id_never_holds_the_secret():
    secret = "s3cret-token-of-32-characters-xx"
    assert token_id(None) == "anonymous"
    ident = token_id(secret)
    assert len(ident) == 12 and ident not in secret and ident == sha256_bytes(secret.encode())[:12]


def test_cli_synthesize_marks_the_png_and_provenance_finds_it(tmp_path, tiny_synth, monkeypatch):
    image = np.full((32, 32, 3), 120, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[10:22, 10:22] = 255
    (tmp_path / "img.png").write_bytes(encode_png(image))
    (tmp_path / "mask.png").write_bytes(encode_png(mask))
    audit = tmp_path / "audit.sqlite"
    monkeypatch.setenv("LESIONSYNTH_AUDIT_DB", str(audit))
    out = tmp_path / "out.png"
    args = ("--image", tmp_path / "img.png", "--mask", tmp_path / "mask.png", "--model", tiny_synth)
    result = run("synthesize", *args, "--out", out, "--seed", 5, "--steps", 2)
    assert result.exit_code == 0, result.output
    made = read_provenance(out)
    assert made is not None and made.seed == 5 and made.source_sha256 == sha256_file(tmp_path / "img.png")
    [logged] = AuditLog(audit).find(sha256_file(out))
    assert (logged.source, logged.actor, logged.seed) == ("cli", "local", 5)
    assert logged.mask_sha256 == sha256_file(tmp_path / "mask.png")

    shown = run("provenance", out)
    assert shown.exit_code == 0, shown.output
    assert "synthetic: true" in shown.output and "seed: 5" in shown.output
    assert "audit log: 1 entry" in shown.output and "source=cli" in shown.output
    assert "img.png" not in shown.output  # no file names anywhere
    real = run("provenance", tmp_path / "img.png")
    assert real.exit_code == 0 and "provenance: none" in real.output and "audit log: 0 entries" in real.output


@pytest.mark.timeout(180)
def test_balance_job_marks_every_image_and_logs_it(tmp_path, demo_manifest, tiny_synth, monkeypatch):
    from models.jobs import JOB_TYPES, JobContext, JobRoots, validate
    from models.store import ModelStore

    monkeypatch.delenv("LESIONSYNTH_AUDIT_DB", raising=False)
    roots = JobRoots((demo_manifest.parent,), tmp_path / "out")
    store = ModelStore(tmp_path / "store")
    store.publish("synthesizer", tiny_synth)
    params = {"manifest": str(demo_manifest), "normal_label": "normal", "lesion_label": "lesion"}
    params = validate("balance", {**params, "count": 2, "steps": 2}, roots)
    ctx = JobContext("b1", tmp_path / "jobs" / "b1" / "work", store, roots.output_root)
    JOB_TYPES["balance"].run(params, ctx)
    log = AuditLog(tmp_path / "audit.sqlite")  # the default: beside the model store
    pngs = sorted((roots.output_root / "b1" / "synthetic").glob("*.png"))
    assert len(pngs) == 2 and log.count() == 2
    for png in pngs:
        made = read_provenance(png)
        [logged] = log.find(sha256_file(png))
        assert made is not None and logged.source == "balance-job" and logged.actor == "local"
        assert (logged.seed, logged.model_version) == (made.seed, made.model_version)
        assert logged.image_sha256 == made.source_sha256


def test_service_handler_marks_and_logs_rest_and_grpc(tmp_path, tiny_synth, normal_pair, monkeypatch):
    from services.synthesis.handler import SynthesisHandler, parse_task
    from services.synthesis.settings import SynthesisSettings

    token = "a-token-of-at-least-sixteen-chars"
    monkeypatch.setenv("LESIONSYNTH_SYNTHESIZER", str(tiny_synth))
    monkeypatch.setenv("LESIONSYNTH_MODEL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("LESIONSYNTH_DEVICE", "cpu")
    monkeypatch.setenv("LESIONSYNTH_API_TOKEN", token)
    monkeypatch.setenv("LESIONSYNTH_AUDIT_DB", str(tmp_path / "logs" / "audit.sqlite"))
    settings = SynthesisSettings.from_env()
    handler = SynthesisHandler(settings)
    try:
        image, mask = normal_pair
        image_png, mask_png = encode_png(image), encode_png(mask.astype(np.uint8) * 255)
        for transport in ("rest", "grpc"):
            task = parse_task(image_png, mask_png, 3, 2, None, settings.common)
            [result] = handler.run([task], transport)
            made = read_provenance(result.png)
            assert made == Provenance(result.model_version, 3, sha256_bytes(image_png))
            [logged] = [e for e in handler.audit.find(sha256_bytes(result.png)) if e.source == transport]
            assert logged.actor == token_id(token) and token not in repr(logged)
            assert (logged.image_sha256, logged.mask_sha256) == (
                sha256_bytes(image_png),
                sha256_bytes(mask_png),
            )
    finally:
        handler.close()
