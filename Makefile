# tledge: the common jobs. `make demo` installs and runs the whole path on built-in data.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo's backbone weights: a local pretrained MobileNetV2 1.0 file when this checkout has
# one beside it (machines without internet; any name starting mobilenet_v2_1.0 and ending .h5),
# else ImageNet weights that Keras downloads once.
OFFLINE_WEIGHTS := $(firstword $(sort $(wildcard ../shared/weights/mobilenet_v2_1.0*.h5)))
WEIGHTS ?= $(if $(OFFLINE_WEIGHTS),$(OFFLINE_WEIGHTS),imagenet)
DEMO_OUT ?= models/demo

export TF_CPP_MIN_LOG_LEVEL ?= 2
# setuptools' ten-line "Editable installation" banner warns of nothing a user did
QUIET_PIP := PYTHONWARNINGS="ignore:Editable installation"

# The exact versions `make install` and `make install-pi` install (and `tledge deploy` sends to
# a device's pip): resolved by `make lock` with uv, tested by `make test` and `make pi-check`.
LOCK_TRAIN := tledge/locks/train.txt
LOCK_PI := tledge/locks/pi.txt
# universal: one file for every Python 3.10-3.12 and platform (markers where versions differ),
# so the same pins hold on the laptop and on a Pi's Python 3.11 aarch64
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.10 --quiet \
	--custom-compile-command "make lock"

.PHONY: help install install-pi test test-e2e test-fast test-newest pi-check demo bench lint lock clean

help:  ## this list: each target and what it does
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 20

$(BIN)/tledge: pyproject.toml $(LOCK_TRAIN)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(QUIET_PIP) $(BIN)/python -m pip install --quiet -c $(LOCK_TRAIN) -e ".[train,pi,dev]"
	@touch $@

install: $(BIN)/tledge  ## the training machine's environment (train + pi + dev), exact versions of tledge/locks

# What a Raspberry Pi installs: tledge[pi] alone, no TensorFlow. The tests prove the runtime
# works there (tests/test_runtime.py).
.venv-pi/bin/tledge: pyproject.toml $(LOCK_PI)
	$(PYTHON) -m venv .venv-pi
	.venv-pi/bin/python -m pip install --quiet --upgrade pip
	$(QUIET_PIP) .venv-pi/bin/python -m pip install --quiet -c $(LOCK_PI) -e ".[pi]"
	@touch $@

install-pi: .venv-pi/bin/tledge  ## what a Raspberry Pi installs (tledge[pi], no TensorFlow), in .venv-pi

# The suite on every core (pytest-xdist). The fast tier imports no TensorFlow in the test
# process (tests/conftest.py fails a test that does) and runs on the committed models in
# tests/models; the whole suite adds the tests that train, convert and export.
test: install install-pi  ## the suite but the emulated Pi and the end-to-end checks, on every core
	$(BIN)/python -m pytest -q -m "not pi and not e2e" -n auto --maxprocesses=4 --dist worksteal \
		--durations=20

# The end-to-end checks (whole training runs: clusters, mirrored and mixed precision, resume,
# --init-from, the same seed twice, the disk cache against memory; every backbone through QAT and
# int8 conversion; MobileNetV3 through the CLI's whole path): their own CI step, so `make test`
# stays within 7 minutes on a 2-core machine without VNNI. .ci/run runs both (tests/README.md).
test-e2e: install  ## the end-to-end checks: whole training runs, clusters, every backbone's QAT
	$(BIN)/python -m pytest -q -m "e2e and not pi" -n auto --maxprocesses=4 --dist worksteal

# The README's Pi commands on an emulated Raspberry Pi OS (Debian 12 arm64, Python 3.11, qemu):
# builds the root once (cached in ~/.cache/tledge), installs .[pi] there, checks every command.
# Needs root; says why and skips where qemu/binfmt_misc can't be used. Proves behaviour, not speed.
pi-check: install  ## the Pi commands on an emulated Raspberry Pi OS (arm64, qemu; needs root)
	$(BIN)/python tests/pi/pi_check.py

test-fast: install  ## no TensorFlow: runtime, camera, serve, CLI, config, faults on tiny models
	$(BIN)/python -m pytest -q -m "not slow" -n auto --maxprocesses=4 --dist worksteal

# pyproject.toml's ranges, not the pins: the newest versions they allow, in .venv-newest, through
# the fast tier; a failure names the package and version that broke it (tests/deps/newest.py).
test-newest:  ## the fast tier on the newest versions pyproject.toml's ranges allow (not the locks)
	$(PYTHON) tests/deps/newest.py --venv .venv-newest --lock $(LOCK_TRAIN)

$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv>=0.9,<1"

lock: $(BIN)/uv  ## refresh tledge/locks/ to the newest versions the ranges allow (then: make test pi-check)
	$(UV_COMPILE) --upgrade --extra train --extra pi --extra dev -o $(LOCK_TRAIN)
	$(UV_COMPILE) --upgrade --extra pi -o $(LOCK_PI)
	@echo "tledge/locks/ refreshed: run make install test pi-check, then commit the locks"

demo: install  ## train on the generated shapes (frozen, fine-tune, QAT), export, evaluate
	$(BIN)/tledge train --data shapes --image-size 96 --weights $(WEIGHTS) --val-split 0.25 \
		--epochs-frozen 5 --epochs-finetune 2 --epochs-qat 2 \
		--out $(DEMO_OUT) --overwrite
	$(BIN)/tledge export $(DEMO_OUT) --int8 --fp32 --overwrite
	$(BIN)/tledge evaluate $(DEMO_OUT)/export/model_int8.tflite --data shapes --overwrite

bench: install  ## every format of the reference backbones side by side, timed on this machine
	$(BIN)/python benchmarks/run.py --weights $(WEIGHTS)

lint: install  ## ruff over the package and the tests
	$(BIN)/ruff check tledge tests benchmarks

clean:  ## remove the demo run and pytest's cache
	rm -rf $(DEMO_OUT) .pytest_cache .venv-newest
