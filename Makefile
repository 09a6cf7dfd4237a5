# The two commands a new user needs: `make demo` and `make test`. Both create .venv and install
# the project into it first (nothing needs installing by hand).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed-stamp
PIP_FLAGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install demo test test-all test-extras lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/optimize run -o out/demo/digits.opt.onnx

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

# The framework paths with their optional extras (docs/frameworks.md): installs [hf] into .venv
# and runs the framework tests, slow ones included. TensorFlow is large and pins its own
# dependencies: give a Python that has tensorflow + tf2onnx with TF_PYTHON=/path/to/python
# (passed on as OPTIMIZE_TF_PYTHON); without it the TensorFlow tests skip.
TF_PYTHON ?=
test-extras: install
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -e '.[dev,hf]'
	$(if $(TF_PYTHON),OPTIMIZE_TF_PYTHON=$(TF_PYTHON),) $(BIN)/python -m pytest -q -m 'not gpu and not distributed' tests/optimize/frameworks/test_frameworks.py tests/test_frameworks_hf.py tests/optimize/frameworks/test_tf_convert.py

# lint-imports: the layering contract in pyproject.toml ([tool.importlinter])
lint: install
	$(BIN)/ruff check optimize passes cli tests bench
	$(BIN)/lint-imports

# BENCH_ARGS: e.g. --quick, --only mlp, --wait-idle 300 (see bench/README.md)
BENCH_ARGS ?=
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf out .pytest_cache .import_linter_cache build *.egg-info
