"""A 16 MiB KServe request is read off the event loop: ``/healthz`` keeps answering within 50 ms while one is being
inflated, parsed and base64-decoded, on a real server (uvicorn on a loopback port, in this process) with a fake model.

Measured on a 2-core AMD EPYC shared at a load average of 12-13 (worst ``/healthz`` during the request, best of up to
eight runs, in seven test runs): base64 JSON 15.8-49.3 ms, gzip 28.6-41.0 ms, medians 1-10 ms. With the body decoded
on the event loop, as before, every run had one ``/healthz`` wait 128-241 ms (base64) or 293-516 ms (gzip).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import http.client
import json
import os
import random
import statistics
import string
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import pytest

from api import kserve
from api.main import create_app
from api.settings import Settings
from tests.harness.live import serving_in_thread
from tests.support import FakeDetector, encode, random_rgb

LIMIT = 16 * 1024 * 1024
IMAGES = 4


def padded_png(size: int, seed: int) -> bytes:
    """A 16×12 noise PNG of exactly ``size`` bytes: the rest is a private ancillary chunk of random bytes, which
    decoders skip (so the body is heavy to read and the images light to decode)."""
    png = encode(random_rgb(16, 12, seed))
    filler = size - len(png) - 12  # length, type and CRC around the chunk's data
    data = os.urandom(filler)
    chunk = struct.pack(">I", filler) + b"prVt" + data + struct.pack(">I", zlib.crc32(b"prVt" + data))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


def request_json(*images: bytes) -> dict:
    data = [base64.b64encode(image).decode() for image in images]
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": data}]}


def inference_json(image_size: int) -> bytes:
    return json.dumps(request_json(*(padded_png(image_size, seed) for seed in range(IMAGES)))).encode()


def sixteen_mib_json() -> bytes:
    """An inference request of base64 images as close under 16 MiB as whole base64 quads allow."""
    overhead = len(inference_json(3000)) - IMAGES * len(base64.b64encode(b"\0" * 3000))
    body = inference_json((LIMIT - overhead) // IMAGES // 4 * 3)
    assert LIMIT - 64 < len(body) <= LIMIT
    return body


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[int]:
    """The app with a fake model under uvicorn on a free loopback port, in a thread; yields the port."""
    with serving_in_thread(create_app(settings, detector=FakeDetector())) as port:
        yield port


def healthz_during(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, list[float]]:
    """POST ``body`` to the fake model's infer endpoint and, until it is answered, time ``GET /healthz`` back to back
    on a connection of its own: the POST's status and the latencies in ms."""
    answer: list[int] = []

    def infer() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/v2/models/fake/infer", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        answer.append(response.status)
        connection.close()

    health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    health.request("GET", "/healthz")
    health.getresponse().read()  # connected and warm
    poster = threading.Thread(target=infer)
    poster.start()
    latencies = []
    while poster.is_alive():
        started = time.perf_counter()
        health.request("GET", "/healthz")
        response = health.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status == 200
        time.sleep(0.002)
    poster.join()
    health.close()
    return answer[0], latencies


@pytest.mark.parametrize("variant", ["base64", "gzip"])
def test_healthz_answers_within_50_ms_while_a_16_mib_request_is_decoded(variant: str) -> None:
    body = sixteen_mib_json()
    headers = {"Content-Type": "application/json"}
    if variant == "gzip":  # inflates to the same 16 MiB
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    settings = Settings(threads=2, max_wait_ms=0, drain_delay_s=0, max_images_per_request=IMAGES)
    runs = []
    with serving(settings) as port:
        warm_up = json.dumps(request_json(encode(random_rgb(16, 12)))).encode()
        assert healthz_during(port, warm_up, {"Content-Type": "application/json"})[0] == 200  # imports, first calls
        # Decoded on the event loop, one /healthz waits the whole 100-400 ms, in every run; a shared 2-core machine may
        # stall any run by itself (idle, 1 call in 300 took 160 ms at a load of 12), so the best of eight decides.
        for _ in range(8):
            status, latencies = healthz_during(port, body, headers)
            assert status == 200
            assert len(latencies) >= 5  # the request lasted long enough to be measured during
            runs.append((max(latencies), statistics.median(latencies), len(latencies)))
            if runs[-1][0] < 50:
                break
    print(
        ", ".join(f"{variant}: {n} /healthz, median {median:.1f} ms, worst {worst:.1f} ms" for worst, median, n in runs)
    )
    worst, median, _ = min(runs)
    assert worst < 50 and median < 10, runs


@pytest.mark.parametrize("piece", [4, 8, 12])
def test_base64_in_pieces_decodes_and_refuses_what_base64_does(piece: int) -> None:
    """Pieces change nothing: on valid texts and on mutations of them (a character replaced, inserted or removed,
    padding anywhere), the same bytes or an error in both."""
    rng = random.Random(piece)
    alphabet = string.ascii_letters + string.digits + "+/=-_ .\n"
    for _ in range(5000):
        text = base64.b64encode(rng.randbytes(rng.randint(0, 40))).decode()
        if rng.random() < 0.7 and text:
            at = rng.randrange(len(text))
            mutation = rng.choice(["replace", "insert", "delete"])
            if mutation == "replace":
                text = text[:at] + rng.choice(alphabet) + text[at + 1 :]
            elif mutation == "insert":
                text = text[:at] + rng.choice(alphabet) + text[at:]
            else:
                text = text[:at] + text[at + 1 :]
        try:
            expected: bytes | None = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            expected = None
        try:
            got: bytes | None = kserve.b64decode(text, piece)
        except (binascii.Error, ValueError):
            got = None
        assert got == expected, text
