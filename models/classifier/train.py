"""Train the screening classifier. Read top to bottom, :func:`train_classifier` is the recipe:

1. validate the manifest; take the ``train`` rows the strategy uses and the real ``val`` rows
   (``test`` is never read here);
2. decode and resize them once;
3. build a torchvision ResNet (``weights=None``) with one logit, channels_last, AdamW + cosine schedule;
4. resume from the newest checkpoint when asked;
5. per epoch: draw the strategy's epoch, minimise BCE-with-logits (positive weight per strategy), then
   score ``val``; keep the weights with the best val AUC (ties: lower val loss); stop after ``patience``
   epochs without improvement;
6. choose the operating threshold on ``val`` (the most specific threshold reaching the target
   sensitivity) and write the folder with its model card;
7. delete the checkpoints: a finished run is recognised by its card, and resuming it returns that card,
   so nothing reads them again. Each one holds the weights three times (model, best, AdamW's two moments
   count twice), ~400 MB for a ResNet-50: an experiment of 4 strategies x 10 seeds kept 16 GB of them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    require_resume_for_existing_run,
    save_checkpoint,
)
from models.classifier.balancing import Strategy
from models.classifier.config import ClassifierConfig, build_classifier
from models.classifier.data import ImageTable
from models.classifier.folder import CARD_NAME, read_card, write_classifier
from models.classifier.train_settings import ClassifierTrainSettings
from models.data.manifest import load_manifest
from models.devices import autocast_for, backward_step, pick_device
from models.errors import ConfigError
from models.evaluation.roc import roc_auc, sensitivity_specificity, threshold_for_sensitivity
from models.progress import tqdm
from models.review import keeps_row

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_logits(
    net: torch.nn.Module, table: ImageTable, config: ClassifierConfig, device, batch_size: int = 64
):
    net.eval()
    out = []
    for i in range(0, len(table), batch_size):
        x, _ = table.batch(torch.arange(i, min(i + batch_size, len(table))), config)
        out.append(net(x.to(device).contiguous(memory_format=torch.channels_last)).float().flatten().cpu())
    return torch.cat(out)


def train_classifier(s: ClassifierTrainSettings) -> dict:
    """Run the recipe; return the model card (``s`` was checked when it was built)."""
    out, ckpt_root = Path(s.out), Path(s.out) / "checkpoints"
    require_resume_for_existing_run(out, CARD_NAME, s.resume)
    if s.resume and (out / CARD_NAME).exists():
        return read_card(out)
    strategy = Strategy(s.balance)

    # 1. Rows: the strategy's train pool and the real val rows. Never test.
    manifest = load_manifest(s.manifest, progress=s.progress)
    manifest.require_label(s.positive_label)
    train_rows = [r for r in manifest.rows_in("train") if not strategy.drops_row(r.fields)]
    val_rows = [r for r in manifest.rows_in("val") if r.fields.get("synthetic", "0") != "1"]
    # A person's review (models/review.py): rejected synthetic rows never, unreviewed ones unless required.
    reviewed = [r for r in train_rows if keeps_row(r.fields, s.require_review)]
    n_review_dropped = len(train_rows) - len(reviewed)
    if strategy.uses_synthetic and not any(r.fields.get("synthetic") == "1" for r in reviewed):
        if n_review_dropped:
            raise ConfigError(
                f"--balance {s.balance} needs synthetic rows, and review left none: every synthetic row is "
                "rejected" + (" or unreviewed (--require-review)" if s.require_review else "")
            )
        raise ConfigError(
            f"--balance {s.balance} needs synthetic rows: give the manifest written by `lesionsynth balance`"
        )
    if strategy.uses_synthetic:
        train_rows = reviewed
    else:
        n_review_dropped = 0

    # 2. Images, decoded once.
    train = ImageTable.from_rows(train_rows, s.positive_label, s.config.image_size, s.progress, "train")
    keep = strategy.pool_mask(train.synthetic)
    pool = ImageTable(
        train.images[keep],
        train.labels[keep],
        train.synthetic[keep],
        [n for n, k in zip(train.rows, keep.tolist(), strict=True) if k],
    )
    val = ImageTable.from_rows(val_rows, s.positive_label, s.config.image_size, s.progress, "val")
    if len(val) == 0 or val.labels.min() == val.labels.max():
        raise ConfigError("the 'val' split needs both classes to choose a threshold and to stop early")

    # 3. Model and optimiser.
    device = pick_device(s.device)
    torch.manual_seed(s.seed)
    net = build_classifier(s.config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    generator = torch.Generator().manual_seed(s.seed)
    pos_weight = torch.tensor(strategy.pos_weight(pool.labels), device=device)
    autocast, scaler = autocast_for(device)
    run = {
        "config": json.loads(json.dumps(s.config.to_dict())),  # as it reads back from state.json
        "manifest_sha256": manifest.sha256(),
        "balance": s.balance,
        "positive_label": s.positive_label,
        "batch_size": s.batch_size,
        "seed": s.seed,
        "epochs": s.epochs,
    }

    # 4. Resume.
    epoch, history, best, best_state, stale = 0, [], (-1.0, float("inf")), None, 0
    if s.resume and (ckpt := latest_checkpoint(ckpt_root)):
        tensors, state = load_checkpoint(ckpt, optimizer, generator)
        if state["run"] != run:
            changed = sorted(k for k in run if state["run"].get(k) != run[k])
            raise ConfigError(f"cannot resume: the checkpoint was made with different {', '.join(changed)}")
        net.load_state_dict(tensors["model"])
        best_state = tensors["best"]
        epoch, history, stale = state["step"], state["history"], state["stale"]
        best = tuple(state["best"])
        log.info("resumed after epoch %d", epoch)

    # 5. Epochs with early stopping on val AUC.
    bar = tqdm(
        total=s.epochs,
        initial=epoch,
        desc=f"train classifier ({s.balance})",
        unit="epoch",
        disable=not s.progress,
    )
    while epoch < s.epochs and stale < s.patience:
        for group in optimizer.param_groups:  # cosine schedule, a pure function of the epoch (resumable)
            group["lr"] = s.learning_rate * 0.5 * (1 + np.cos(np.pi * epoch / s.epochs))
        net.train()
        order = strategy.epoch_indices(pool.labels, generator)
        tic, losses = time.perf_counter(), []
        for i in range(0, len(order), s.batch_size):
            idx = order[i : i + s.batch_size]
            x, y = pool.batch(idx, s.config, generator)
            x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
            with autocast():
                logits = net(x).float().flatten()
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            backward_step(loss, net, optimizer, scaler)
            losses.append(loss.item())
        val_logits = predict_logits(net, val, s.config, device)
        val_auc = roc_auc(val.labels.numpy(), val_logits.numpy())
        val_loss = F.binary_cross_entropy_with_logits(val_logits, val.labels).item()
        epoch += 1
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "val_auc": val_auc,
                "val_loss": val_loss,
                "images_per_second": len(order) / (time.perf_counter() - tic),
            }
        )
        if (val_auc, -val_loss) > (best[0], -best[1]):
            best, best_state, stale = (
                (val_auc, val_loss),
                {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                0,
            )
        else:
            stale += 1
        bar.set_postfix(
            loss=f"{history[-1]['train_loss']:.3f}", val_auc=f"{val_auc:.3f}", best=f"{best[0]:.3f}"
        )
        bar.update(1)
        save_checkpoint(
            ckpt_root,
            epoch,
            {"model": net.state_dict(), "best": best_state},
            optimizer,
            generator,
            {"run": run, "history": history, "stale": stale, "best": list(best)},
        )
    bar.close()

    # 6. Threshold on val with the best weights; write the folder.
    net.load_state_dict(best_state)
    val_scores = torch.sigmoid(predict_logits(net, val, s.config, device)).numpy()
    threshold = threshold_for_sensitivity(val.labels.numpy(), val_scores, s.target_sensitivity)
    sens, spec = sensitivity_specificity(val.labels.numpy(), val_scores, threshold)
    card = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "positive_label": s.positive_label,
        "threshold": threshold,
        "threshold_rule": f"most specific threshold reaching sensitivity >= {s.target_sensitivity} on val",
        "target_sensitivity": s.target_sensitivity,
        "val": {
            "auc": best[0],
            "loss": best[1],
            "sensitivity": sens,
            "specificity": spec,
            "n": len(val),
            "n_positive": int(val.labels.sum()),
        },
        "train": {
            "n_pool": len(pool),
            "n_positive": int(pool.labels.sum()),
            "n_synthetic": int(pool.synthetic.sum()),
            "n_review_dropped": n_review_dropped,
            "pos_weight": float(pos_weight),
        },
        "balance": s.balance,
        "seed": s.seed,
        "epochs_run": epoch,
        "stopped_early": stale >= s.patience,
        "history": history,
        "manifest_sha256": run["manifest_sha256"],
        "device": str(device),
    }
    card = write_classifier(out, best_state, s.config, card)

    # 7. The run is finished: its checkpoints are dead weight.
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return card
