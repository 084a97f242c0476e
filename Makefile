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

.PHONY: help install install-pi test test-fast pi-check demo bench lint clean

help:  ## this list: each target and what it does
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 20

$(BIN)/tledge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(QUIET_PIP) $(BIN)/python -m pip install --quiet -e ".[train,pi,dev]"
	@touch $@

install: $(BIN)/tledge  ## the training machine's environment: train + pi + dev extras

# What a Raspberry Pi installs: tledge[pi] alone, no TensorFlow. The tests prove the runtime
# works there (tests/test_runtime.py).
.venv-pi/bin/tledge: pyproject.toml
	$(PYTHON) -m venv .venv-pi
	.venv-pi/bin/python -m pip install --quiet --upgrade pip
	$(QUIET_PIP) .venv-pi/bin/python -m pip install --quiet -e ".[pi]"
	@touch $@

install-pi: .venv-pi/bin/tledge  ## what a Raspberry Pi installs (tledge[pi], no TensorFlow), in .venv-pi

# The suite on every core (pytest-xdist). The fast tier imports no TensorFlow in the test
# process (tests/conftest.py fails a test that does) and runs on the committed models in
# tests/models; the whole suite adds the tests that train, convert and export.
test: install install-pi  ## the whole suite but the emulated Pi, on every core (what CI runs)
	$(BIN)/python -m pytest -q -m "not pi" -n auto --maxprocesses=4 --dist worksteal --durations=20

# The README's Pi commands on an emulated Raspberry Pi OS (Debian 12 arm64, Python 3.11, qemu):
# builds the root once (cached in ~/.cache/tledge), installs .[pi] there, checks every command.
# Needs root; says why and skips where qemu/binfmt_misc can't be used. Proves behaviour, not speed.
pi-check: install  ## the Pi commands on an emulated Raspberry Pi OS (arm64, qemu; needs root)
	$(BIN)/python tests/pi/pi_check.py

test-fast: install  ## no TensorFlow: runtime, camera, serve, CLI, config, faults on tiny models
	$(BIN)/python -m pytest -q -m "not slow" -n auto --maxprocesses=4 --dist worksteal

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
	rm -rf $(DEMO_OUT) .pytest_cache
