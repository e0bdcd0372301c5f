# dla_repro — the two commands a researcher needs are `make reproduce` and `make test`.
# Everything runs inside .venv, created from the exact versions in requirements/lock.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= quick

.PHONY: setup reproduce replicate test smoke lab ui lock clean-results help

help:
	@echo "make reproduce   run every notebook in notebooks/pipeline.yaml (profile=$(PROFILE)), log to MLflow, write results/"
	@echo "make replicate   re-run the profile into $(REPLICA) and compare its verdicts and arm means with results/"
	@echo "make test        run the test suite"
	@echo "make smoke       run the whole pipeline in the seconds-long smoke profile"
	@echo "make lab         JupyterLab on this repository (127.0.0.1)"
	@echo "make ui          MLflow UI over the project's store (127.0.0.1)"
	@echo "make lock        re-resolve requirements/lock.txt from pyproject.toml"

# Idempotent: reinstalls only when the lock or pyproject.toml changed.
setup: $(STAMP)
$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

reproduce: setup
	$(BIN)/dla-repro run --profile $(PROFILE)

# A re-run on this machine, in its own results folder and MLflow store, judged against the committed results/.
REPLICA ?= replication
replicate: setup
	rm -rf $(REPLICA) && mkdir -p $(REPLICA)
	DLA_REPRO_RESULTS=$(abspath $(REPLICA))/results MLFLOW_TRACKING_URI=sqlite:///$(abspath $(REPLICA))/mlflow.db \
	  DLA_REPRO_ARTIFACTS=$(abspath $(REPLICA))/mlartifacts DLA_REPRO_CHECKPOINTS=$(abspath $(REPLICA))/checkpoints \
	  DLA_REPRO_LOGS=$(abspath $(REPLICA))/logs \
	  $(BIN)/dla-repro run --profile $(PROFILE)
	$(BIN)/dla-repro replication $(REPLICA)/results --profile $(PROFILE)

smoke: setup
	$(BIN)/dla-repro run --profile smoke

test: setup
	$(BIN)/python -m pytest -q

# Jupyter refuses to start as root (containers) without --allow-root.
USER_ID ?= $(shell id -u)
LAB_FLAGS := $(if $(filter 0,$(USER_ID)),--allow-root)

lab: setup
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir . $(LAB_FLAGS)

ui: setup
	$(BIN)/dla-repro ui

# Resolve the newest versions pyproject.toml admits into a scratch venv and freeze them.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[dev,scale,team]'
	( echo "# Exact versions used by 'make setup'. Regenerate with 'make lock' (see README)."; \
	  .lock-venv/bin/python -m pip freeze --exclude dla_repro --exclude dla-repro ) > requirements/lock.txt
	rm -rf .lock-venv
