# lesionsynth: the commands a new user needs are `make serve` (the three services, demo models trained on
# first start), `make test` (the whole suite) and `make demo` (the ML pipeline end to end on
# demo data). Everything installs into .venv from the pins in pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/lesionsynth
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
RUNS   := runs
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup test lint demo bench serve clean

setup: $(STAMP)

# Idempotent: the stamp is named after pyproject.toml's hash, so a changed pin reinstalls and an
# unchanged one costs nothing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

# The Triton test server (tests/triton/serve_onnx.py) needs numpy<2: its own venv, pinned in
# tests/triton/requirements.txt; the stamp is named after that file's hash, like $(STAMP).
TRITON_VENV := .venv-triton
TRITON_REQS := tests/triton/requirements.txt
TRITON_STAMP = $(TRITON_VENV)/.installed-$(shell cat $(TRITON_REQS) | sha256sum | cut -c1-16)

.PHONY: triton-env
triton-env: $(TRITON_STAMP)

$(TRITON_STAMP): $(TRITON_REQS)
	test -x $(TRITON_VENV)/bin/python || python3.11 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade "pip>=24"
	$(TRITON_VENV)/bin/python -m pip install -q -r $(TRITON_REQS)
	rm -f $(TRITON_VENV)/.installed-*
	touch $@

# Two pytest workers, one torch thread each: the machine has 2 cores and many tests are small.
# The Triton tests run a real Triton server (PyTriton) from its own venv: test needs triton-env.
test: setup triton-env
	$(VENV)/bin/ruff check lesionsynth models services tests loadtests
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -q

lint: setup
	$(VENV)/bin/ruff format --check lesionsynth models services tests loadtests
	$(VENV)/bin/ruff check lesionsynth models services tests loadtests

# End to end on procedurally generated (non-medical) demo data: make data, split it, train a small
# synthesizer (1000 steps at 32 px, ~2 min on 2 cores), paint lesions into a few normal images, draw
# them, and run the balancing experiment (experiments/demo.yaml). Reruns reuse what is finished.
demo: setup
	$(CLI) data demo $(RUNS)/demo/data
	$(CLI) data split --manifest $(RUNS)/demo/data/manifest.csv --test-fraction 0.2 --val-fraction 0.1 --seed 0 --force
	$(CLI) train-synthesizer --manifest $(RUNS)/demo/data/manifest.csv --lesion-label lesion \
	    --out $(RUNS)/demo/synthesizer --resolution 32 --preset small --max-steps 1000 --batch-size 8 --resume
	$(CLI) balance --manifest $(RUNS)/demo/data/manifest.csv --model $(RUNS)/demo/synthesizer \
	    --normal-label normal --lesion-label lesion --count 8 --out $(RUNS)/demo/balanced
	$(CLI) grid --manifest $(RUNS)/demo/data/manifest.csv --model $(RUNS)/demo/synthesizer \
	    --label normal --reference-label lesion --out $(RUNS)/demo/grid.png
	$(CLI) experiment --config experiments/demo.yaml
	@echo "demo done: see $(RUNS)/demo/grid.png, $(RUNS)/demo/balanced/manifest.csv and $(RUNS)/demo/experiment/report.md"

# Benchmarks write docs/benchmarks/*.json|md. On PH2 they train runs/ph2/synth-{uncond,cond} first when
# missing (~20 min each on 2 cores), then reuse them.
bench: setup
	$(PY) -m loadtests.benchmarks.synthesis_vs_repaint
	$(PY) -m loadtests.benchmarks.design_choices

# Services vs in-process (issue 4, section 8): classifier at 16 clients vs raw onnxruntime (and via a real
# Triton from .venv-triton when present), synthesis service vs the in-process sampler. ~7-10 min on 2 cores;
# writes docs/benchmarks/services.json|md (summary and how to read it: docs/PERFORMANCE.md).
.PHONY: bench-services
bench-services: setup
	$(PY) -m loadtests.benchmarks.services

# Issue 14: INT8 vs FP32 screening (AUC on the ISIC 2017 test split, images/s raw and through the service)
# -> docs/benchmarks/int8.json|md. Needs the ISIC 2017 donor experiment's manifest (its data stage:
# `lesionsynth experiment --config experiments/isic2017-donor.yaml`); trains the ResNet-50 it measures
# (128 px, the manifest's train rows, ~15 min on 2 cores) when missing. ~10 min more.
INT8_MANIFEST ?= $(RUNS)/experiments/isic2017-donor/data/manifest.csv
INT8_CLASSIFIER ?= $(RUNS)/int8/resnet50-128
.PHONY: bench-int8
bench-int8: setup
	test -f $(INT8_CLASSIFIER)/model_card.json || $(CLI) train-classifier --manifest $(INT8_MANIFEST) \
	    --positive-label lesion --out $(INT8_CLASSIFIER) --arch resnet50 --image-size 128 --epochs 14 \
	    --patience 5 --seed 0 --resume --no-progress
	$(PY) -m loadtests.benchmarks.int8 --classifier $(INT8_CLASSIFIER) --manifest $(INT8_MANIFEST)

# Issue 14: the training paths on a CUDA GPU (AMP synthesizer run, UNet crops/s at batch 64, ResNet-50
# images/s, DDP with NCCL) vs the committed CPU figures -> docs/benchmarks/gpu.json|md; <= 8 min. On a
# machine without a GPU it says so and measures nothing (exit 0). Offline wheels: see the script's docstring.
.PHONY: gpu-check
gpu-check:
	$(PY) -m loadtests.benchmarks.gpu_check

# Issue 6, the long runs (CI runs short versions inside `make test`). Each uses the services of
# `make serve` when they answer on the default ports, else starts them, and writes its figures to docs/.
.PHONY: rehearse-images
rehearse-images: setup   # each image's requirements file installed + served, no Docker -> docs/images.md
	$(PY) deploy/docker/rehearse.py classifier classifier.gpu synthesis synthesis.gpu training training.gpu

.PHONY: loadtest soak fuzz
loadtest: setup   # every locust scenario, 16 users x 60 s -> docs/loadtest.md|json (raw CSVs: runs/locust/)
	$(PY) -m loadtests.run_load
soak: setup       # 10 min steady load, RSS per process -> docs/soak.md|json|png
	$(PY) -m loadtests.soak
fuzz: setup       # schemathesis (1,000+ cases per service) + gRPC fuzz -> docs/fuzz.md|json
	@for port in 3000 3001 3002; do curl -sf -o /dev/null http://127.0.0.1:$$port/readyz || \
	  { echo "start the services first (make serve) or pass --*-url"; exit 1; }; done
	$(PY) -m loadtests.fuzz

# The three services on 127.0.0.1 (ports in README.md); trains demo models into runs/model-store first
# when the store has none (~4 min on 2 cores, once).
serve: setup
	BENTOML_DO_NOT_TRACK=True $(PY) -m services.launch

clean:
	rm -rf $(RUNS) .pytest_cache
