# vgg_lightning: `make fit` trains, `make test` tests. Both create .venv and install the project first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install lint format test test-all fit bench tensorboard clean-logs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  pass options with ARGS, e.g. make fit ARGS='--config configs/cpu.yaml --trainer.max_epochs 5'"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its test extra (skipped when up to date)

lint: $(STAMP)  ## check formatting and lint with ruff (configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## format the code and fix what ruff can fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP)  ## run the test suite (fast tests; slow ones with make test-all)
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: $(STAMP)  ## run every test, slow ones included
	$(PY) -m pytest $(ARGS)

fit: $(STAMP)  ## train VGG-16-BN on CIFAR-10 with the default recipe, vgg_lightning/default.yaml (downloads CIFAR-10 to data/)
	$(PY) -m vgg_lightning fit $(ARGS)

bench: $(STAMP)  ## Lightning vs a plain PyTorch loop: images/s, data wait, memory
	$(PY) -m vgg_lightning.tools.bench $(ARGS)

tensorboard: $(STAMP)  ## show the runs in lightning_logs/ at http://localhost:6006
	$(VENV)/bin/tensorboard --logdir lightning_logs

clean-logs:  ## delete all runs in lightning_logs/ (checkpoints included)
	find lightning_logs -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +

clean:  ## remove the venv and caches (keeps data/ and lightning_logs/)
	rm -rf $(VENV) .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
