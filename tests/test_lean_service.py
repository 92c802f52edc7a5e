"""README, "A lean serving process": on an engine other than PyTorch the service never imports torch, though it is
installed (tests/test_without_torch.py covers a process where it is not).

A fresh ``python -m api`` starts with a ``sitecustomize`` module first on ``PYTHONPATH`` that puts a finder in front
of the import system: every attempt to import ``torch`` or ``torchvision``, caught or not, is written to a file with
the stack that made it, and then goes on as usual. The service loads the COCO model from its cached ONNX export,
serves a real detection, and is stopped (SIGTERM); the file must stay empty. The finder also records that it was
installed, so a hook that never ran cannot pass for a clean process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from detector.backends.onnx import cached_onnx, weights_key
from detector.samples import photo
from tests.harness.live import running_service

WATCHED = ("torch", "torchvision")
SITECUSTOMIZE = """\
import os
import sys
import traceback

_LOG = {log!r}


class _WatchImports:
    # A meta path finder that finds nothing: it only writes down who asked for a watched module.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {watched!r}:
            with open(_LOG, "a") as log:
                log.write(f"pid {{os.getpid()}}: import {{name}}\\n" + "".join(traceback.format_stack()) + "\\n")
        return None


sys.meta_path.insert(0, _WatchImports())
with open({installed!r}, "a") as installed:
    installed.write(f"{{os.getpid()}}\\n")
"""


@pytest.fixture
def watched_env(tmp_path) -> tuple[dict[str, str], Path, Path]:
    """The environment of a process whose torch imports are recorded: (env, the imports' log, the installs' log)."""
    hook = tmp_path / "watch"
    hook.mkdir()
    log, installed = tmp_path / "torch-imports.log", tmp_path / "hook-installed.log"
    (hook / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(log=str(log), installed=str(installed), watched=WATCHED)
    )
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}, log, installed


def test_the_hook_records_an_import_of_torch(watched_env):
    env, log, installed = watched_env
    subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, **env}, check=True)
    assert installed.read_text().strip().isdigit()
    assert log.read_text().startswith("pid ") and "import torch\n" in log.read_text()


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_the_service_on_an_export_never_imports_torch(coco_detector, watched_env, engine):
    pytest.importorskip(engine)
    # The export the engine runs, as `make install` caches it (written here, in this process, if it is missing).
    cached_onnx(coco_detector.model, weights_key(coco_detector.digest))
    env, log, installed = watched_env
    env |= {"DETECTOR_WEIGHTS": "coco", "DETECTOR_BACKEND": engine, "DETECTOR_THREADS": "1"}
    with running_service(env) as service:
        with urllib.request.urlopen(f"{service.url}/v1/model", timeout=10) as response:
            assert json.loads(response.read())["backend"] == engine
        request = urllib.request.Request(
            f"{service.url}/v1/detect?score_threshold=0.5",
            data=photo("grace_hopper.jpg").read_bytes(),
            headers={"Content-Type": "image/jpeg"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            (result,) = json.loads(response.read())["results"]
        assert [d["label"] for d in result["detections"]] == ["person", "tie"]
        pid = service.process.pid
    assert service.process.returncode == 0, service.log()[-3000:]
    assert installed.read_text().split() == [str(pid)], "the import hook did not run in the service"
    assert not log.exists(), f"the service imported torch:\n{log.read_text()[:5000]}"
