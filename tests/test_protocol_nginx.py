"""The protocols through the repository's nginx config (docker/nginx.conf.template) in front of a live service with
API keys on: every way of presenting a key reaches the replica, and nginx's own errors take each protocol's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from detector.samples import photo
from tests.harness.live import free_port
from tests.harness.stack import Nginx, find_nginx
from tests.support import two_model_service

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (apt-get install nginx)"),
]

KEY = "nginx-test-key"
NGINX_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with two_model_service(DETECTOR_API_KEYS=KEY) as service:
        port = int(service.url.rsplit(":", 1)[1])
        nginx = Nginx(Path(tmp_path_factory.mktemp("nginx")), free_port(), [port], NGINX_LIMIT)
        nginx.start()
        try:
            yield nginx.url
        finally:
            nginx.stop()


def test_keys_in_headers_and_in_the_deepstack_form_pass_through(balancer: str) -> None:
    data = photo("grace_hopper.jpg").read_bytes()
    files = {"image": ("g.jpg", data, "image/jpeg")}
    assert httpx.post(f"{balancer}/v1/detect", files=files, timeout=60).status_code == 401
    for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        assert httpx.post(f"{balancer}/v1/detect", files=files, headers=headers, timeout=60).status_code == 200

    from deepstack.core import DeepstackException, DeepstackObject

    host, port = balancer.removeprefix("http://").split(":")
    found = DeepstackObject(ip=host, port=int(port), api_key=KEY, min_confidence=0.4, timeout=60).detect(data)
    assert "person" in {p["label"] for p in found}
    with pytest.raises(DeepstackException, match="status code: 401"):
        DeepstackObject(ip=host, port=int(port), api_key="wrong", timeout=60).detect(data)


def test_tritonclient_with_a_bearer_key_through_nginx(balancer: str) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=balancer.removeprefix("http://"), network_timeout=60)
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.is_server_ready()  # health needs no key
    assert client.is_model_ready("person", headers=headers) and not client.is_model_ready("person")
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([photo("grace_hopper.jpg").read_bytes()], dtype=np.object_))
    result = client.infer("person", [image], headers=headers)
    assert result.as_numpy("num_detections")[0] >= 1
    client.close()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/detect",
            {"error": {"code": "body_too_large", "message": f"the request body exceeds {NGINX_LIMIT} bytes"}},
        ),
        (
            "/v1/vision/detection",
            {"success": False, "error": f"the request body exceeds {NGINX_LIMIT} bytes", "duration": 0},
        ),
        ("/v2/models/coco/infer", {"error": f"the request body exceeds {NGINX_LIMIT} bytes"}),
    ],
)
def test_nginx_s_413_takes_the_protocol_s_shape(balancer: str, path: str, body: dict) -> None:
    response = httpx.post(f"{balancer}{path}", content=b"\0" * (NGINX_LIMIT + 1), headers={"X-API-Key": KEY})
    assert response.status_code == 413
    assert json.loads(response.content) == body
