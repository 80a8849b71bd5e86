# `make demo` and `make test` work on a fresh machine: they install what is missing, then run.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := libturbojpeg0-dev libopencv-dev pkg-config
# Only the tests need these (`make demo` does not): a one-node Slurm cluster for tests/launch/,
# PostgreSQL under a team's MLflow server (tests/test_tracking_server.py), a headless browser for
# tests/test_mlflow_ui.py.
TEST_APT_PACKAGES := slurm-wlm munge postgresql chromium
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# ffcv builds from source against turbojpeg and OpenCV; install them only when missing.
.apt.ok:
	@if pkg-config --exists libturbojpeg opencv4 2>/dev/null; then :; else \
		echo "installing $(APT_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	@touch $@

# The test-only system packages, installed when one is missing.
.apt-test.ok: Makefile
	@missing=$$(for p in $(TEST_APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing" $$missing "(for the tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(STAMP): pyproject.toml .apt.ok
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the Python stack into $(VENV) (log: $(VENV)/pip.log)"
	@$(PY) -m pip install -e '.[dev]' > $(VENV)/pip.log 2>&1 || { grep -v "is ignored" $(VENV)/pip.log | tail -40; exit 1; }
	$(PY) -c "import sgformer, torch, timm, ffcv, mlflow, dvc" 
	@touch $@

demo: install
	$(VENV)/bin/dvc repro

test: install .apt-test.ok
	$(PY) -m pytest

test-fast: install .apt-test.ok
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_loader.py

clean:
	rm -rf $(VENV) .apt.ok .apt-test.ok
