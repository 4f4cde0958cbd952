# layerparity: two commands do everything on a fresh Debian 12 machine.
#   make demo   run the parity check on the bundled example (src/layerparity/demo)
#   make test   run the whole suite against real Caffe and real TensorFlow
# Each sets up what it needs on first use (Debian packages, .venv, the Caffe
# build, cached in ~/.cache/layerparity) and reuses it afterwards.
# CAFFE_PYTHON=/path/to/folder/holding/caffe uses an existing pycaffe instead.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.layerparity-deps
export GLOG_minloglevel ?= 2
export TF_CPP_MIN_LOG_LEVEL ?= 2
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench fuzz lint validation clean converter-ports

setup: $(STAMP)
	@./scripts/ensure-debs.sh
	@./scripts/build-caffe.sh $(PY)

$(STAMP): pyproject.toml
	@./scripts/ensure-debs.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[tf,dev]' 2> >(grep -v 'is ignored: it is neither' >&2)
	@touch $@

demo: setup
	@$(PY) -m layerparity.cli demo

# The third-party matrix's ports (tests/thirdparty): caffe2onnx -> onnx2tf in a venv of their own,
# cached in ~/.cache/layerparity (scripts/make-converter-ports.sh).
converter-ports: setup
	@./scripts/make-converter-ports.sh $(PY)

test: setup converter-ports
	LAYERPARITY_REQUIRE_FRAMEWORKS=1 $(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: setup
	LAYERPARITY_REQUIRE_FRAMEWORKS=1 $(PY) -m pytest -n 2 --dist loadgroup -m "not slow" $(PYTEST_ARGS)

validation: setup converter-ports
	LAYERPARITY_WRITE_VALIDATION=1 $(PY) -m pytest -n 2 --dist loadgroup tests/zoo tests/thirdparty $(PYTEST_ARGS)

bench: setup converter-ports
	@$(PY) benchmarks/run.py

fuzz: setup
	@$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q 'atheris>=2.3'
	@$(PY) fuzz/run.py

lint: setup
	@$(PY) -m ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
