"""Train the lesion synthesizer: a DDPM on the masked lesion regions of lesion images (paper 000).

Read top to bottom, :func:`train_synthesizer` is the recipe:

1. validate the manifest and take the ``train`` rows of the lesion class (never ``val``/``test``); a
   class-conditional synthesizer (``config.num_classes == 2``) also takes the normal class's rows, and an
   unconditional pre-training run (``all_regions``) the rows of every label;
2. extract each lesion region (mask bounding box + margin, square, resized) into memory;
3. build the UNet (or start from a pre-trained synthesizer's weights, ``init_from``: paper 002's recipe of
   pre-training on every region, then fine-tuning on the lesion regions), the DDPM schedule, AdamW and an
   EMA of the weights;
4. resume from the newest checkpoint when asked;
5. optimise the simplified DDPM objective  L = || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2
   (Ho et al. 2020, Eq. 14 / Algorithm 1), checkpointing every N steps; a conditional UNet also gets each
   region's class, replaced by the null class with probability ``label_dropout`` (Ho & Salimans 2022), so
   one network learns the conditional and the unconditional model that guidance contrasts;
6. write the EMA weights as a diffusers folder with a model card.

Under ``torchrun --nproc-per-node N`` the same recipe trains data-parallel (models/distributed.py):
``batch_size`` is per process, so a step sees ``N x batch_size`` lesion regions; rank 0 writes the
checkpoints (with every rank's generator state, so a resume is exact) and the model.
"""

from __future__ import annotations

import copy
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from models.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    require_resume_for_existing_run,
    save_checkpoint,
)
from models.data.manifest import load_manifest
from models.devices import autocast_for, backward_step
from models.diffusion.config import SynthesizerConfig, build_train_scheduler, build_unet
from models.diffusion.crops import LesionCrops
from models.diffusion.folder import (
    CARD_NAME,
    LoadedSynthesizer,
    load_synthesizer,
    read_card,
    write_synthesizer,
)
from models.diffusion.train_settings import TrainSettings, snapshot_dir
from models.distributed import DataParallel
from models.errors import ConfigError
from models.masks.bank import bank_from_rows
from models.progress import tqdm

log = logging.getLogger(__name__)


def drop_labels(labels: torch.Tensor, p: float, null_class: int, generator: torch.Generator) -> torch.Tensor:
    """Label dropout (Ho & Salimans 2022): each label (B,) becomes ``null_class`` with probability ``p``,
    so one network also learns the unconditional model that classifier-free guidance contrasts with."""
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def start_weights(folder: Path, config: SynthesizerConfig) -> LoadedSynthesizer:
    """The finished synthesizer a fine-tuning run starts from; refused unless its config equals ``config``
    (the weights would not fit, or would mean something else)."""
    init = load_synthesizer(folder)
    if init.config != config:
        theirs, ours = init.config.to_dict(), config.to_dict()
        changed = sorted(k for k in ours if theirs.get(k) != ours.get(k))
        raise ConfigError(
            f"--init-from {folder.name}: its synthesizer differs in {', '.join(changed)}; fine-tune with "
            "the same resolution, preset, mask conditioning, margin, schedule and classes"
        )
    return init


def train_synthesizer(s: TrainSettings) -> dict:
    """Run the recipe (data-parallel under torchrun); return the model card of the finished synthesizer.

    ``s`` was checked when it was built (TrainSettings.__post_init__)."""
    dp = DataParallel.from_env()
    device = dp.device(s.device)
    with dp.session(device):
        return _train(s, dp, device)


def _train(s: TrainSettings, dp: DataParallel, device: torch.device) -> dict:
    out, ckpt_root = Path(s.out), Path(s.out) / "checkpoints"
    config = s.config  # the architecture part of the settings
    require_resume_for_existing_run(out, CARD_NAME, s.resume)

    # 1. Data: the train rows of the lesion class only.
    manifest = load_manifest(s.manifest, progress=s.progress)
    manifest.require_label(s.lesion_label)
    rows = manifest.rows_in("train", s.lesion_label)
    if not rows:
        raise ConfigError(f"no 'train' rows with label {s.lesion_label!r}: nothing to learn lesions from")
    bank_rows = rows  # the lesion class's train masks: the shape bank of mask proposals (models/masks/)
    if s.all_regions:
        rows = manifest.rows_in("train")
    labels = [1] * len(rows)
    if config.conditional:
        normals = manifest.rows_in("train", s.normal_label)
        if not normals:
            raise ConfigError(f"no 'train' rows with label {s.normal_label!r} for the normal class")
        rows, labels = normals + rows, [0] * len(normals) + labels
    manifest_sha = manifest.sha256()
    manifest.require_masks(rows, "the synthesizer learns from the masked regions of these rows")
    bank = bank_from_rows(bank_rows, s.lesion_label, {"manifest_sha256": manifest_sha})

    # 2. Lesion regions, in memory.
    show = s.progress and dp.is_main
    crops = LesionCrops.from_rows(rows, config.resolution, config.margin, progress=show, labels=labels)
    log.info("training on %d regions at %dpx", len(crops), config.resolution)

    # 3. Model, schedule, optimiser, EMA. The seed fixes the initial weights (the same on every rank) and
    #    every random draw (each rank its own stream).
    torch.manual_seed(s.seed)
    if s.init_from is not None:
        init = start_weights(Path(s.init_from), config)
        unet = init.unet
    else:
        unet = build_unet(config)
    unet = unet.to(device).train()
    model = dp.wrap(unet, device)  # forward and backward through DDP; weights and EMA read from unet
    noise_scheduler = build_train_scheduler(config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=s.learning_rate, weight_decay=1e-2)
    ema = EMAModel(unet.parameters(), decay=s.ema_max_decay, use_ema_warmup=True, power=3 / 4)
    generator = torch.Generator().manual_seed(dp.rank_seed(s.seed))
    autocast, scaler = autocast_for(device)
    run_identity = {
        "config": config.to_dict(),
        "manifest_sha256": manifest_sha,
        "lesion_label": s.lesion_label,
        "batch_size": s.batch_size,
        "seed": s.seed,
    }
    if dp.enabled:
        run_identity["processes"] = dp.world_size  # absent for one process: older checkpoints still match
    if config.conditional:
        run_identity |= {"normal_label": s.normal_label, "label_dropout": s.label_dropout}
    if s.all_regions:
        run_identity["all_regions"] = True
    if s.init_from is not None:
        run_identity["init_from"] = init.model_version

    # 4. Resume.
    step, loss_curve, train_seconds = 0, [], 0.0
    if s.resume and (ckpt := latest_checkpoint(ckpt_root)):
        tensors, state = load_checkpoint(ckpt, optimizer, generator)
        saved = state["metadata"]["run"]
        if saved != run_identity:
            changed = sorted(k for k in {*saved, *run_identity} if saved.get(k) != run_identity.get(k))
            raise ConfigError(
                f"cannot resume: the checkpoint was made with different {', '.join(changed)}; "
                "use the original settings or a new --out"
            )
        if dp.enabled:
            generator.set_state(tensors["rank_generators"][str(dp.rank)])
        unet.load_state_dict(tensors["model"])
        shadow = tensors["ema"]
        ema.load_state_dict({**state["ema"], "shadow_params": [shadow[str(i)] for i in range(len(shadow))]})
        step, loss_curve = state["step"], state["metadata"]["loss_curve"]
        train_seconds = state["metadata"]["train_seconds"]
        log.info("resumed from step %d", step)
    elif s.resume and (out / CARD_NAME).exists():
        card = read_card(out)
        if card.get("steps", 0) >= s.max_steps:
            return card

    def checkpoint() -> None:
        """Every rank calls it (gathering the generator states is collective); rank 0 writes."""
        states = dp.gather(generator.get_state(), device)
        if not dp.is_main:
            return
        ema_state = ema.state_dict()
        shadow = {str(i): t for i, t in enumerate(ema_state.pop("shadow_params"))}
        meta = {"run": run_identity, "loss_curve": loss_curve, "train_seconds": train_seconds}
        tensors = {"model": unet.state_dict(), "ema": shadow}
        if dp.enabled:
            tensors["rank_generators"] = {str(r): states[r] for r in range(dp.world_size)}
        save_checkpoint(ckpt_root, step, tensors, optimizer, generator, {"ema": ema_state, "metadata": meta})

    def export_ema(folder: Path) -> dict:
        """Write the current EMA weights as a synthesizer folder (the final model, or a snapshot)."""
        model = copy.deepcopy(unet).eval()
        ema.copy_to(model.parameters())
        card = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "lesion_label": s.lesion_label,
            "manifest_sha256": manifest_sha,
            "manifest_name": manifest.path.name,
            "images_used": len(crops),
            "image_rows": crops.rows,
            **(
                {
                    "normal_label": s.normal_label,
                    "label_dropout": s.label_dropout,
                    "regions_per_class": {"normal": labels.count(0), "lesion": labels.count(1)},
                }
                if config.conditional
                else {}
            ),
            **({"all_regions": True} if s.all_regions else {}),
            **(
                {
                    "init_from": {
                        "model_version": init.model_version,
                        "steps": init.card.get("steps"),
                        "images_used": init.card.get("images_used"),
                        "all_regions": init.card.get("all_regions", False),
                    }
                }
                if s.init_from is not None
                else {}
            ),
            "steps": step,
            "batch_size": s.batch_size,
            "processes": dp.world_size,
            "learning_rate": s.learning_rate,
            "seed": s.seed,
            "resolution": config.resolution,
            "device": str(device),
            "train_seconds": round(train_seconds, 2),
            "loss_curve": loss_curve,
        }
        return write_synthesizer(folder, model.cpu(), noise_scheduler, config, card, bank=bank)

    # 5. Optimise.
    bar = tqdm(total=s.max_steps, initial=step, desc="train synthesizer", unit="step", disable=not show)
    window: list[float] = []
    tic = time.perf_counter()
    while step < s.max_steps:
        x0, mask, y = crops.sample(s.batch_size, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (s.batch_size,), generator=generator)
        x0, mask, noise, t = x0.to(device), mask.to(device), noise.to(device), t.to(device)
        class_labels = None
        if config.conditional:
            class_labels = drop_labels(y, s.label_dropout, config.null_class, generator).to(device)
        xt = noise_scheduler.add_noise(x0, noise, t)
        model_in = torch.cat([xt, mask], dim=1) if config.mask_conditioning else xt
        for group in optimizer.param_groups:
            group["lr"] = s.learning_rate * min(1.0, (step + 1) / s.warmup_steps)
        with autocast():
            pred = model(model_in, t, class_labels=class_labels).sample
        loss = F.mse_loss(pred.float(), noise)
        backward_step(loss, model, optimizer, scaler, clip=1.0)  # DDP: gradients averaged over ranks
        ema.step(unet.parameters())
        step += 1
        window.append(loss.item())
        if step % s.log_every == 0 or step == s.max_steps:
            now = time.perf_counter()
            train_seconds += now - tic
            loss_curve.append([step, dp.mean(sum(window) / len(window), device)])
            images = len(window) * s.batch_size * dp.world_size
            bar.set_postfix(loss=f"{loss_curve[-1][1]:.4f}", img_s=f"{images / (now - tic):.1f}")
            window, tic = [], now
        bar.update(1)
        if dp.is_main and step in s.snapshot_steps and not (snapshot_dir(out, step) / CARD_NAME).is_file():
            export_ema(snapshot_dir(out, step))  # before the checkpoint: a resume never skips one
        if step % s.checkpoint_every == 0 and step < s.max_steps:
            checkpoint()
    bar.close()
    checkpoint()

    # 6. The EMA weights are the model we ship (rank 0 writes it; the others wait, then read its card).
    card = export_ema(out) if dp.is_main else None
    dp.barrier()
    return card if card is not None else read_card(out)
