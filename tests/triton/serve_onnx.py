"""Serve an ONNX classifier from a real Triton server (PyTriton) on the CPU, for tests.

Runs with ``.venv-triton/bin/python`` (PyTriton needs numpy<2; see tests/triton/requirements.txt)::

    serve_onnx.py --repository REPO --model lesion_classifier --grpc-port P --http-port P2 --metrics-port P3
    serve_onnx.py --onnx FILE --model lesion_classifier ...

PyTriton ships the tritonserver binary with the python backend only, so a Python callable runs the
repository's ``<model>/1/model.onnx`` with onnxruntime, bound under the same model name and tensor names
as the production repository (``image`` FP32 [3, S, S] -> ``probability`` FP32 [1], batching on, dynamic
batching). Serves until SIGTERM or SIGINT, then stops Triton and removes its temporary workspace.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import numpy as np


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--repository", type=Path, help="Triton model repository (<repo>/<model>/1/model.onnx)")
    src.add_argument("--onnx", type=Path, help="an ONNX file to serve directly")
    p.add_argument("--model", default="lesion_classifier")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--max-batch-size", type=int, default=None, help="default: config.pbtxt's, else 32")
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="serve_onnx: %(levelname)s %(name)s: %(message)s")
    # The python-backend stub must load this interpreter's libpython, not the system's older one
    # (otherwise the model goes UNAVAILABLE: "'_thread.RLock' object has no attribute '_recursion_count'").
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and libdir not in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
    tmp = Path(tempfile.mkdtemp(prefix="pytriton-"))
    # Anything PyTriton keeps outside the workspace goes to the temp dir too, not ~/.cache/pytriton.
    os.environ.setdefault("PYTRITON_HOME", str(tmp / "home"))
    try:
        return _serve(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _serve(args: argparse.Namespace, tmp: Path) -> int:
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    if args.onnx is not None:
        onnx_path, config_text = args.onnx, ""
    else:
        onnx_path = args.repository / args.model / "1" / "model.onnx"
        config_file = args.repository / args.model / "config.pbtxt"
        config_text = config_file.read_text() if config_file.exists() else ""
    max_batch = args.max_batch_size
    if max_batch is None:
        found = re.search(r"^max_batch_size:\s*(\d+)", config_text, re.M)
        max_batch = int(found.group(1)) if found else 32

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    in_meta, out_meta = session.get_inputs()[0], session.get_outputs()[0]
    size = in_meta.shape[-1]
    if not isinstance(size, int):
        raise SystemExit(f"{onnx_path}: input {in_meta.name} has no fixed image size ({in_meta.shape})")

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        probability = session.run([out_meta.name], {in_meta.name: image.astype(np.float32, copy=False)})[0]
        return {out_meta.name: probability.astype(np.float32, copy=False)}

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    config = TritonConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        exit_on_error=True,
    )
    with Triton(config=config, workspace=tmp / "workspace") as triton:
        triton.bind(
            model_name=args.model,
            infer_func=infer,
            inputs=[Tensor(name=in_meta.name, dtype=np.float32, shape=(3, size, size))],
            outputs=[Tensor(name=out_meta.name, dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                batching=True,
                max_batch_size=max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.run()
        logging.getLogger("serve_onnx").info(
            "serving %s as %r: grpc :%d, http :%d", onnx_path, args.model, args.grpc_port, args.http_port
        )
        while not stop.wait(timeout=1.0):
            if not triton.is_alive():
                logging.getLogger("serve_onnx").error("Triton or the model proxy died")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
