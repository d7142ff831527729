"""The export commands: ONNX, a Triton repository, the classifier service's serving folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lesionsynth.cli.app import app, user_errors
from models.export.graph import TRITON_NAME


@app.command("export-onnx")
@user_errors
def export_onnx_cmd(
    model: Annotated[Path, typer.Option(help="Classifier folder.")],
    out: Annotated[Path, typer.Option(help="Output .onnx file (its card goes to FILE.json).")],
) -> None:
    """Export the classifier to ONNX (dynamic batch), refused unless it matches torch within 1e-4."""
    from models.export.onnx import export_onnx

    card = export_onnx(model, out)
    typer.echo(f"wrote {out} (max |onnx - torch| = {card['parity_max_abs_diff']:.2e})")


@app.command("export-triton")
@user_errors
def export_triton_cmd(
    model: Annotated[Path, typer.Option(help="Classifier folder.")],
    repository: Annotated[Path, typer.Option(help="Triton model repository folder.")] = Path("models/triton"),
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = TRITON_NAME,
    instance_kind: Annotated[str, typer.Option(help="gpu (production) or cpu.")] = "gpu",
    max_batch_size: int = 32,
) -> None:
    """Write a Triton repository: NAME/config.pbtxt (onnxruntime, dynamic batching) + NAME/1/model.onnx."""
    from models.export.triton import export_triton

    path = export_triton(
        model, repository, name=name, instance_kind=instance_kind, max_batch_size=max_batch_size
    )
    typer.echo(f"wrote {path}")


@app.command("export-serving")
@user_errors
def export_serving_cmd(
    model: Annotated[Path, typer.Option(help="Classifier folder.")],
    out: Annotated[Path, typer.Option(help="Serving folder to write (model.onnx + card + triton/).")],
    instance_kind: Annotated[str, typer.Option(help="Triton instances: gpu (production) or cpu.")] = "gpu",
    store: Annotated[
        Path | None, typer.Option(help="Also publish it into this model store (kind classifier-onnx).")
    ] = None,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Also write model.int8.onnx (static QDQ quantisation) + its Triton model."
        ),
    ] = False,
    calibration_manifest: Annotated[
        Path | None,
        typer.Option(help="With --int8: manifest whose train rows (only) calibrate the INT8 graph."),
    ] = None,
    calibration_rows: Annotated[int, typer.Option(help="With --int8: at most this many train rows.")] = 256,
) -> None:
    """Write the classifier service's serving folder (ONNX + a Triton repository of the same graph)."""
    from models.export.serving import export_serving_folder

    card = export_serving_folder(
        model,
        out,
        instance_kind=instance_kind,
        int8=int8,
        calibration_manifest=calibration_manifest,
        calibration_rows=calibration_rows,
    )
    typer.echo(f"wrote {out} (version {card['model_version']})")
    if "int8" in card:
        calibration = card["int8"]["calibration"]
        typer.echo(f"wrote {out / card['int8']['file']} (calibrated on {calibration['rows']} train rows)")
    if store is not None:
        from models.store import ModelStore

        stored = ModelStore(store).publish("classifier-onnx", out)
        # A version already stored without the INT8 graph gets it added (models/store.py); a different
        # INT8 graph for a version that has one is refused there with an error.
        typer.echo(f"published classifier-onnx {stored.version} to {stored.path}")
