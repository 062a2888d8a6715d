# Two entry points: `make demo` (napari with the demo model) and `make test` (the suite, headless).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch must be installed before anything that depends on torch,
# otherwise pip resolves a multi-GB CUDA build (see docs/install.md).
TORCH_PIN ?= torch==2.13.0

.PHONY: test demo lint venv clean screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[testing]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: $(STAMP)
	$(BIN)/napari-ldae demo $(DEMO_ARGS)

screenshots: $(STAMP)
	$(BIN)/python docs/make_screenshots.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
