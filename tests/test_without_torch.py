"""The service where torch cannot be imported, as in the lean image: ``python -m api`` serves a weights file's ONNX
export, and ``auto`` measures the engines in its child process, with ``import torch`` failing in both processes.

A directory holding ``torch.py`` and ``torchvision.py`` that raise ImportError goes first on PYTHONPATH, in front of
the installed packages; the cache is a fresh directory with the weights and their export only, as the image bakes it.
tests/test_docker.py checks the image itself where podman has it.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from detector.backends import selection
from detector.backends.onnx import cached_onnx, weights_key
from detector.backends.selection import Candidate
from detector.samples import photo
from tests.harness.live import running_service

pytest.importorskip("openvino")

BLOCKED = ("torch", "torchvision")


@pytest.fixture
def image_like_cache(person_detector, tmp_path, monkeypatch) -> Path:
    """A cache directory holding the person weights and their ONNX export, and nothing else."""
    cache = tmp_path / "cache"
    (cache / "exports").mkdir(parents=True)
    weights = Path(shutil.copy(person_detector._weights, cache / "person.safetensors"))
    shutil.copy(cached_onnx(person_detector.model, weights_key(person_detector.digest)), cache / "exports")
    monkeypatch.setenv("DETECTOR_CACHE_DIR", str(cache))
    return weights


@pytest.fixture
def without_torch(tmp_path) -> dict[str, str]:
    """The environment of a process in which ``import torch`` (and torchvision) raises ImportError."""
    shim = tmp_path / "without-torch"
    shim.mkdir()
    for name in BLOCKED:
        (shim / f"{name}.py").write_text(
            f"raise ImportError('{name} is not installed here (tests/test_without_torch)')\n"
        )
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "DETECTOR_THREADS": "1"}


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _detect(url: str, path: Path) -> list[dict]:
    request = urllib.request.Request(f"{url}/v1/detect", data=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=30) as response:
        (result,) = json.loads(response.read())["results"]
    return result["detections"]


def test_the_shim_blocks_torch(without_torch):
    import subprocess
    import sys

    env = {**os.environ, **without_torch}
    done = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "ImportError: torch is not installed here" in done.stderr


def test_the_service_serves_an_export_without_torch(person_detector, image_like_cache, without_torch):
    # auto's table, as a measurement on this machine left it; the service builds the chosen engine from the export.
    table = [
        Candidate("onnxruntime", "fp32", 11.0, "raw max abs diff 0.0e+00", True),
        Candidate("openvino", "fp32", 9.0, "raw max abs diff 3.4e-05", True),
    ]
    selection.remember(table, person_detector.spec, person_detector.digest, device="cpu")
    env = {
        **without_torch,
        "DETECTOR_CACHE_DIR": os.environ["DETECTOR_CACHE_DIR"],
        "DETECTOR_WEIGHTS": str(image_like_cache),
    }
    with running_service(env) as service:
        model = _get(f"{service.url}/v1/model")
        assert model["backend"] == "openvino" and "measured earlier on this machine" in model["backend_reason"]
        path = photo("grace_hopper.jpg")
        served = _detect(service.url, path)
    (expected,) = person_detector.detect(path)  # eager PyTorch, in this process
    assert [d["label"] for d in served] == [d.label for d in expected.detections]
    np.testing.assert_allclose([d["score"] for d in served], [d.score for d in expected.detections], atol=1e-3)
    np.testing.assert_allclose([d["box"] for d in served], [d.box for d in expected.detections], atol=0.05)


@pytest.mark.slow
def test_auto_measures_and_chooses_without_torch(image_like_cache, without_torch):
    # No table yet: the child measures every engine against fp32 on the export, on the check photographs.
    env = {
        **without_torch,
        "DETECTOR_CACHE_DIR": os.environ["DETECTOR_CACHE_DIR"],
        "DETECTOR_WEIGHTS": str(image_like_cache),
    }
    with running_service(env, timeout_s=300) as service:
        model = _get(f"{service.url}/v1/model")
        assert model["backend_reason"].startswith("auto (measured now)"), model["backend_reason"]
        assert model["backend"] != "torch", model["backend_reason"]
        assert _detect(service.url, photo("grace_hopper.jpg"))
    assert (Path(os.environ["DETECTOR_CACHE_DIR"]) / selection.CACHE_FILE).is_file()  # the child cached its table
