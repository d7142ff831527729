"""Demo models for ``make serve`` on a fresh clone: trained here on the demo data, published to the store.

Nothing can be downloaded, so a first ``make serve`` trains what the three services load: a small 32 px
synthesizer (1000 steps), a ResNet-18 classifier at 64 px (4 epochs) and its serving folder (ONNX + a
Triton repository with CPU instances). About 3-4 minutes on 2 cores; every step resumes or is skipped
when its model is already in the store, so later starts take seconds. The demo data is procedurally
generated and NOT medical: these models show the services working, not screening quality.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models.store import ModelStore

log = logging.getLogger(__name__)


def demo_manifest(work: Path) -> Path:
    from models.data.demo import write_demo_dataset
    from models.data.manifest import load_manifest
    from models.data.split import add_split

    path = work / "data" / "manifest.csv"
    if path.is_file() and "split" in load_manifest(path, check_files=False).columns:
        return path
    path = write_demo_dataset(work / "data", seed=0)
    manifest = load_manifest(path)
    add_split(manifest, test_fraction=0.2, val_fraction=0.1, seed=0, force=True)
    manifest.save()
    return path


def ensure_demo_models(store_root: str | Path, work: str | Path, progress: bool = True) -> dict[str, str]:
    """Train and publish whatever kind the store lacks; return {kind: version} of the store's latest."""
    store, work = ModelStore(store_root), Path(work)
    if store.latest("synthesizer") is None:
        from models.diffusion.train import TrainSettings, train_synthesizer

        log.info("training the demo synthesizer (32 px, 1000 steps)")
        out = work / "synthesizer"
        train_synthesizer(
            TrainSettings(
                manifest=demo_manifest(work),
                lesion_label="lesion",
                out=out,
                resolution=32,
                preset="small",
                max_steps=1000,
                batch_size=8,
                checkpoint_every=250,
                resume=(out / "checkpoints").is_dir(),
                progress=progress,
            )
        )
        store.publish("synthesizer", out)
    if store.latest("classifier") is None:
        from models.classifier.train import ClassifierTrainSettings, train_classifier

        log.info("training the demo classifier (ResNet-18, 64 px)")
        out = work / "classifier"
        train_classifier(
            ClassifierTrainSettings(
                manifest=demo_manifest(work),
                positive_label="lesion",
                out=out,
                arch="resnet18",
                image_size=64,
                epochs=4,
                batch_size=16,
                resume=(out / "checkpoints").is_dir(),
                progress=progress,
            )
        )
        store.publish("classifier", out)
    if store.latest("classifier-onnx") is None:
        from models.export.serving import export_serving_folder

        log.info("exporting the demo classifier for serving (ONNX + Triton repository)")
        out = work / "classifier-serving"
        export_serving_folder(store.latest("classifier").path, out, instance_kind="cpu")
        store.publish("classifier-onnx", out)
    return {kind: store.latest(kind).version for kind in ("synthesizer", "classifier", "classifier-onnx")}
