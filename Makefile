# The README's commands. `make demo` and `make test` each do all the set-up they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LM_STAMP := $(VENV)/.lm-installed-stamp

.PHONY: install install-lm demo test test-fast lint bench clean kenlm docker-check docker-smoke

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,onnx]'
	touch $(STAMP)

install: $(STAMP)

# The LM extra (kenlm, pyctcdecode) plus KenLM's lmplz and build_binary, built from the kenlm sdist.
$(LM_STAMP): $(STAMP) scripts/build_kenlm.sh
	bash scripts/build_kenlm.sh --wheel-dir tools/kenlm/wheels tools/kenlm/bin
	$(BIN)/python -m pip install -q -c constraints.txt --find-links tools/kenlm/wheels -e '.[dev,lm,onnx]'
	touch $(LM_STAMP)

install-lm: $(LM_STAMP)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash recipes/fsdd/demo.sh

# What CI runs: the Docker checks, ruff, mypy and every test (the slow ones included).
test: $(LM_STAMP)
	VENV=$(VENV) bash scripts/ci_docker.sh
	$(BIN)/ruff check asrkit tests bench
	$(BIN)/mypy asrkit
	$(BIN)/python -m pytest -q

# The tests without the `slow` marker (no training to convergence, recipe runs, torchrun or kill / resume).
test-fast: $(LM_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# KenLM's lmplz and build_binary, built from the kenlm source distribution into tools/kenlm/bin.
kenlm:
	bash scripts/build_kenlm.sh --wheel-dir tools/kenlm/wheels tools/kenlm/bin

# Lint docker/Dockerfile (hadolint) and run the image's install steps in a scratch venv.
docker-check: install
	VENV=$(VENV) bash scripts/ci_docker.sh

# Build docker/Dockerfile with podman on a local stand-in base (no registry needed) and run prepare / train /
# transcribe / evaluate / lm build in the image (docker/README.md). Not in `make test`: ~30 min cold on 2 cores.
docker-smoke:
	bash scripts/docker_smoke.sh

lint: install
	$(BIN)/ruff check asrkit tests bench
	$(BIN)/mypy asrkit

bench: install
	$(BIN)/python bench/transcribe.py

clean:
	rm -rf exp/demo .pytest_cache .ruff_cache .mypy_cache
