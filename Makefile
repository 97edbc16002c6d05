# `make run`: set up .venv if missing and run the chapter's comparison. `make test`: the whole suite on 2 cores,
# skipping (and naming) the tests that need the real Fashion-MNIST or a SLURM cluster; `make test-all`: nothing skipped.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA ?= ../shared/data/FashionMNIST/raw
DEBIAN_DATA := /usr/share/datasets/fashion-mnist

.PHONY: run test test-all data slurm-packages lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision first, pinned to the builds the pip cache holds, then the project.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test,launchers]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python train.py -m reg.lambd=0,3
	@echo
	@echo "Open the curves with:  $(BIN)/tensorboard --logdir outputs"

# Copy the Fashion-MNIST raw files into data/ (from ../shared or Debian's dataset-fashion-mnist); never downloads.
data:
	mkdir -p data/FashionMNIST/raw
	@if [ -d $(SHARED_DATA) ]; then cp -n $(SHARED_DATA)/*.gz data/FashionMNIST/raw/; \
	elif [ -d $(DEBIAN_DATA) ]; then cp -n $(DEBIAN_DATA)/*.gz data/FashionMNIST/raw/; \
	else echo "No Fashion-MNIST copy found in $(SHARED_DATA) or $(DEBIAN_DATA)"; exit 1; fi
	cd data/FashionMNIST/raw && for f in *.gz; do [ -f "$${f%.gz}" ] || gunzip -k "$$f"; done

# Two pytest-xdist workers, one per core of the 2-core machines the suite is timed on (tests/conftest.py gives each
# one torch thread); --dist loadgroup keeps each xdist_group's tests in one worker (the SLURM ones, say).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# make test with the real Fashion-MNIST (make data) and a one-node SLURM cluster on this machine (as root), stopped
# at the end; REQUIRE_*: a test that would skip for want of either fails instead.
test-all: $(STAMP) data slurm-packages
	REQUIRE_FASHION_MNIST=1 REQUIRE_SLURM=1 scripts/slurm_local.sh run $(MAKE) test

# Debian's slurm-wlm and munge, which scripts/slurm_local.sh runs, installed if missing (as root).
slurm-packages:
	@command -v slurmctld >/dev/null && command -v munged >/dev/null || \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

clean:
	rm -rf outputs/runs outputs/multirun
