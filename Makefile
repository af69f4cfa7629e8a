# `make test` builds .venv from nothing (python3 -m venv + pip) and runs the test-suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install test lint verify clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

# Compare the Flax port with transformers on a downloaded checkpoint: make verify HF=/path/to/Qwen2.5-VL-7B-Instruct
verify: install
	@test -n "$(HF)" || { echo "usage: make verify HF=/path/to/hf/checkpoint"; exit 2; }
	$(PY) -m catts_jax.verify --hf $(HF)

clean:
	rm -rf $(VENV) .pytest_cache
