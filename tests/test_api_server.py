"""The service as a real process: SIGTERM drain, chunked uploads over a socket, JSON logs."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from detector.samples import photo
from tests.harness.live import running_service

pytestmark = pytest.mark.slow


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sigterm_drains_readiness_then_finishes_in_flight_requests_and_exits() -> None:
    env = {
        "DETECTOR_DRAIN_DELAY_S": "1.5",
        "DETECTOR_MAX_IMAGES_PER_REQUEST": "32",
        "DETECTOR_MAX_BATCH_SIZE": "4",
        "DETECTOR_MAX_BODY_BYTES": str(64 * 1024 * 1024),
    }
    with running_service(env) as service:
        host, port = service.url.removeprefix("http://").split(":")
        body, content_type = multipart([photo("astronaut.png").read_bytes()] * 24)  # several forward passes
        outcome: dict[str, object] = {}

        def in_flight() -> None:
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            connection.request("POST", "/v1/detect", body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            outcome["status"], outcome["body"] = response.status, json.loads(response.read())

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.5)  # the request is being decoded or run
        service.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert get_status(f"{service.url}/readyz") == 503  # the balancer is told first...
        assert get_status(f"{service.url}/healthz") == 200  # ...while the process still serves
        thread.join(60)
        assert outcome["status"] == 200 and len(outcome["body"]["results"]) == 24
        assert service.process.wait(30) == 0
        lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert "draining: readiness answers 503 from now on" in messages and "stopped" in messages
    access = [line for line in lines if line["message"] == "request" and line["path"] == "/v1/detect"]
    assert access and access[0]["status"] == 200 and len(access[0]["request_id"]) == 32


def test_chunked_upload_over_the_limit_is_refused_before_it_ends(live_service) -> None:
    host, port = live_service.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/detect")
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    chunk = b"\xff" * 65536
    sent = 0
    try:
        for _ in range(64):  # up to 4 MiB against a 2 MiB limit
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        connection.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may close its side once it has answered
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "body_too_large"
    assert get_status(f"{live_service.url}/healthz") == 200


def test_declared_length_over_the_limit_is_refused_without_reading(live_service) -> None:
    host, port = live_service.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/detect")
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Content-Length", str(100 * 1024 * 1024))
    connection.endheaders()  # no body sent at all
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {
        "error": {"code": "body_too_large", "message": f"request body is {100 * 1024 * 1024} bytes; limit 2097152"}
    }
