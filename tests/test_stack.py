"""The load-balanced stack under failure: three replicas behind the repository's nginx config, steady load over real
photos, one replica SIGKILLed and one SIGTERMed, both restarted. Clients must see no failed request.

Two modes (benchmarks/stack.py does the work and prints the table):
- plain processes (``python -m api``): in every CI run, about a minute;
- containers of the podman-built image: heavy, opt in with ``DETECTOR_STACK_IMAGE=localhost/ssdlite-detector:latest``
  (``make stack-test-image`` builds the image and sets it).

nginx comes from Debian's package; as root, the fixture installs it when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest

from detector.samples import photo
from tests.harness.stack import Stack, failure_drill, find_nginx

pytestmark = pytest.mark.slow

IMAGE = os.environ.get("DETECTOR_STACK_IMAGE", "")
PHOTOS = ("grace_hopper.jpg", "astronaut.png", "rocket.jpg", "coffee.png")


@pytest.fixture(scope="module")
def nginx() -> str:
    """The nginx binary, installed with apt where it is missing and we may."""
    if find_nginx() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], env=env, check=True, capture_output=True)
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed and cannot be installed here (apt-get install nginx)")
    return binary


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout


def post(url: str, body: bytes, media_type: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """POST and return (status, headers, JSON body), whatever the status."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": media_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def check_through_nginx(stack: Stack) -> None:
    """Same detections as the Python API; X-Request-ID passes through; nginx's 413 has the service's error shape."""
    from detector.inference import Detector

    path = photo("grace_hopper.jpg")
    status, headers, body = post(f"{stack.url}/v1/detect", path.read_bytes(), "image/jpeg", {"X-Request-ID": "stack-1"})
    assert status == 200, body
    assert {k.lower(): v for k, v in headers.items()}["x-request-id"] == "stack-1"
    assert body["request_id"] == "stack-1"
    (served,) = body["results"]
    (expected,) = Detector.from_weights(None).detect(path)
    assert (served["width"], served["height"]) == (expected.width, expected.height)
    assert [d["label"] for d in served["detections"]] == [d.label for d in expected.detections]
    # The replicas run the `auto` backend (bf16 where the CPU has it): the same detections within its accuracy bar
    # (detector.backends.accuracy: scores within 0.02, boxes within 2 px of eager PyTorch).
    np.testing.assert_allclose(
        [d["score"] for d in served["detections"]], [d.score for d in expected.detections], atol=0.02
    )
    np.testing.assert_allclose([d["box"] for d in served["detections"]], [d.box for d in expected.detections], atol=2)

    too_large = b"\xff" * (stack.max_body_bytes + 1)
    status, _, body = post(f"{stack.url}/v1/detect", too_large, "image/jpeg")
    assert (status, body["error"]["code"]) == (413, "body_too_large")


def run_drill(stack: Stack) -> None:
    report = failure_drill(stack, [photo(name) for name in PHOTOS], phase_s=4.0, concurrency=4)
    print()
    print(report.table())
    assert report.failures == 0, report.failure_kinds
    assert all(phase.requests > 0 for phase in report.phases)
    assert set(report.restart_to_traffic_s) == {stack.replicas[0].address, stack.replicas[1].address}


def test_stack_plain_processes_survive_sigkill_and_sigterm(nginx, tmp_path):
    with Stack(tmp_path) as stack:
        check_through_nginx(stack)
        run_drill(stack)


@pytest.mark.skipif(not IMAGE, reason="opt in: DETECTOR_STACK_IMAGE=<podman image> (make stack-test-image)")
def test_stack_image_containers_survive_sigkill_and_sigterm(nginx, tmp_path):
    # --read-only: the image needs no writable root filesystem (Kubernetes' readOnlyRootFilesystem in docker/k8s.yaml).
    with Stack(tmp_path, image=IMAGE, podman_args=["--read-only"]) as stack:
        replica = stack.replicas[2]
        # (`podman exec`, and so `podman healthcheck run`, fails on these machines: runc cannot set the exec's rlimits.)
        top = subprocess.run(["podman", "top", replica.name, "user"], capture_output=True, text=True, check=True)
        assert top.stdout.split()[1:] == ["detector"]  # PID 1 runs as the image's user, not root
        healthcheck = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", IMAGE))
        assert healthcheck == ["CMD", "python", "/opt/detector/healthcheck.py"]
        # The image's healthcheck command, run beside the replica (host network): healthy.
        podman(
            "run", "--rm", "--network=host", f"--env=PORT={replica.port}", "--entrypoint=python", IMAGE, healthcheck[-1]
        )
        check_through_nginx(stack)
        run_drill(stack)
