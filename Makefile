# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Both are idempotent: a second run skips what is done.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install model lint analyses clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned and installed first so pip never resolves a CUDA build (GPU users: install
# your CUDA build of torch==2.13.0 into .venv before running make).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,lens,lora,apollo]'
	touch $(STAMP)

install: $(STAMP)

model: install
	$(BIN)/steerkit models pull smollm2-135m

# The main job: concept vectors from the story corpus on the default model, then their quality report.
demo: model
	$(BIN)/steerkit extract --stories corpora/
	$(BIN)/steerkit quality-report

test: model
	$(BIN)/steerkit corpus check corpora/
	$(BIN)/ruff check steerkit tests benchmarks analyses
	$(BIN)/ruff format --check steerkit tests benchmarks analyses
	$(BIN)/mypy steerkit
	$(BIN)/python -m pytest -q -x --durations=15

# Regenerate every committed result under analyses/results/ (full runs on the default model: see
# analyses/README.md for each one's runtime on 2 cores).
analyses: model
	for a in analyses/[a-z]*.py; do case $$a in */common.py) ;; *) $(BIN)/python $$a || exit 1;; esac; done

lint: install
	$(BIN)/ruff check steerkit tests benchmarks analyses
	$(BIN)/ruff format --check steerkit tests benchmarks analyses
	$(BIN)/mypy steerkit

clean-venv:
	rm -rf $(VENV)
