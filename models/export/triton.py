"""Write a Triton model repository for the classifier: ``<repo>/<name>/config.pbtxt`` + ``1/model.onnx``.

The config serves the ONNX graph with the onnxruntime backend, dynamic batching (preferred sizes and a
short queue delay: the screening service sends single images, Triton groups them) and GPU instances
(``KIND_GPU``); ``instance_kind="cpu"`` writes the CPU variant used in tests and on CPU-only clusters.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from models.artifacts import atomic_write_text
from models.errors import ConfigError
from models.export.graph import INPUT_NAME, OUTPUT_NAME, TRITON_NAME
from models.export.onnx import export_onnx

DEFAULT_NAME = TRITON_NAME


def config_pbtxt(
    name: str,
    image_size: int,
    max_batch_size: int = 32,
    preferred_batch_sizes: Sequence[int] = (8, 16, 32),
    max_queue_delay_us: int = 2000,
    instance_kind: str = "gpu",
    instance_count: int = 1,
) -> str:
    if instance_kind not in ("gpu", "cpu"):
        raise ConfigError("instance kind must be 'gpu' or 'cpu'")
    if any(p > max_batch_size for p in preferred_batch_sizes):
        raise ConfigError("preferred batch sizes must not exceed max_batch_size")
    kind = "KIND_GPU" if instance_kind == "gpu" else "KIND_CPU"
    gpus = "\n    gpus: [ 0 ]" if instance_kind == "gpu" else ""
    preferred = ", ".join(str(p) for p in preferred_batch_sizes)
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 3, {image_size}, {image_size} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: {instance_count}
    kind: {kind}{gpus}
  }}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def export_triton(
    model_dir: str | Path,
    repository: str | Path,
    name: str = DEFAULT_NAME,
    instance_kind: str = "gpu",
    **options,
) -> Path:
    """Export ONNX into ``<repository>/<name>/1/model.onnx`` and write ``config.pbtxt``; return the model dir."""
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ConfigError("--name may only hold letters, digits, '_' and '-'")
    model_root = Path(repository) / name
    version = model_root / "1"
    card = export_onnx(model_dir, version / "model.onnx")
    # Triton would try to load the card beside the model; keep it one level up, next to config.pbtxt.
    shutil.move(str(version / "model.onnx.json"), str(model_root / "model_card.json"))
    image_size = card["input"]["shape"][-1]
    atomic_write_text(
        model_root / "config.pbtxt", config_pbtxt(name, image_size, instance_kind=instance_kind, **options)
    )
    return model_root
