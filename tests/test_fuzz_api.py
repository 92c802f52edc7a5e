"""Hypothesis throws malformed and hostile uploads at the running service: never a 5xx, and it stays alive.

Inputs: random bytes, real photos mutated (bit flips, truncation, splices), valid images under wrong or odd content
types, PNG headers claiming huge sizes, malformed multipart bodies (boundaries, part names, part types), random
query parameters, and chunked uploads. Every status seen is printed (run with ``-s``) for the report.

Before it, the file fuzzer's fixed cases (``tests/fuzz``: photographs in every format, broken along their
structure, with garbage metadata or renamed) go through the app in this process: 4xx with the error payload or
200, the metadata-only ones 200.
"""

from __future__ import annotations

import collections

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detector.samples import photo
from tests.fuzz.mutations import MEDIA_TYPES, SUFFIXES, make_case, seeds
from tests.support import FakeDetector, encode, png_header_only

SEEN: collections.Counter[int] = collections.Counter()


def _tiny(fmt: str) -> bytes:
    return encode(Image.new("RGB", (9, 7), (200, 30, 60)), fmt)


SEEDS = [_tiny(f) for f in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]
SMALL_PHOTO = photo("grace_hopper.jpg").read_bytes()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on what it tolerates (a corrupt EXIF block)
def test_broken_photographs_get_a_4xx_with_the_error_payload_or_200() -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings

    statuses: collections.Counter[int] = collections.Counter()
    app = create_app(Settings(threads=1, max_wait_ms=0, drain_delay_s=0), detector=FakeDetector())
    with TestClient(app) as client:
        for case in (make_case(0, index) for index in range(300)):
            content_type = MEDIA_TYPES[case.suffix]
            response = client.post("/v1/detect", content=case.data, headers={"Content-Type": content_type})
            statuses[response.status_code] += 1
            assert response.status_code in (200, 413, 415, 422), (case.file_name, response.text)
            if response.status_code != 200:
                error = response.json()["error"]
                assert isinstance(error["code"], str) and isinstance(error["message"], str)
            if case.intact and case.suffix == SUFFIXES[case.seed.format]:  # garbage metadata only: decoded
                assert response.status_code == 200, (case.file_name, response.text)
                assert len(response.json()["results"][0]["detections"]) == 2  # and the stand-in model ran
        assert client.get("/readyz").status_code == 200
    # Renamed files are refused (415: the type contradicts the bytes); the rest decode or are refused as broken.
    assert statuses[200] > 100 and statuses[415] > 20 and statuses[422] > 50


CONTENT_TYPES = [
    "image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff", "image/heic", "image/svg+xml",
    "application/octet-stream", "text/plain", "application/json", "multipart/form-data", "image/", "IMAGE/PNG; x=1",
]  # fmt: skip
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([*SEEDS, SMALL_PHOTO, *(seed.data for seed in seeds())])))
    for _ in range(draw(st.integers(0, 8))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(max_size=64))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


image_bytes = st.one_of(
    st.binary(max_size=2048),
    mutated(),
    st.sampled_from(SEEDS),
    st.builds(lambda w, h: png_header_only(w, h, filler=32), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
)


@st.composite
def multipart_body(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b", "----x1", "a" * 70]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["image", "image", "img", "", 'ima"ge']))
        filename = draw(st.one_of(st.none(), st.sampled_from(["a.png", "", "../../etc/passwd", "x" * 300])))
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        headers = f"Content-Disposition: {disposition}\r\n"
        if draw(st.booleans()):
            headers += f"Content-Type: {draw(st.one_of(st.sampled_from(CONTENT_TYPES), header_text))}\r\n"
        parts.append(f"--{boundary}\r\n{headers}\r\n".encode() + draw(image_bytes) + b"\r\n")
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    if draw(st.booleans()):
        body = draw(mutated()) if not body else body[: draw(st.integers(0, len(body)))]
    declared = draw(
        st.sampled_from(
            [f"multipart/form-data; boundary={boundary}", "multipart/form-data", "multipart/form-data; boundary=zz"]
        )
    )
    return body, declared


raw_body = st.tuples(image_bytes, st.one_of(st.sampled_from(CONTENT_TYPES), header_text))
# Well-formed uploads too, so the fuzzer also reaches the model, the limits and the parameter checks.
TYPED_SEEDS = [
    (data, t)
    for data, t in zip(
        SEEDS, ["image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff", "image/webp"], strict=True
    )
]
valid_body = st.one_of(
    st.sampled_from([*TYPED_SEEDS, (SMALL_PHOTO, "image/jpeg")]),
    st.builds(
        lambda w, h: (png_header_only(w, h, filler=32), "image/png"), st.integers(1, 100_000), st.integers(1, 100_000)
    ),
)
params = st.dictionaries(
    st.sampled_from(["score_threshold", "max_detections", "labels", "format", "other"]),
    st.one_of(
        st.sampled_from(["0", "1", "0.5", "-1", "nan", "inf", "1e309", "101", "person", "cat", "png", "jpeg"]),
        header_text,
    ),
    max_size=4,
)


@pytest.mark.slow
def test_hostile_uploads_never_cause_a_5xx(live_service) -> None:
    with httpx.Client(base_url=live_service.url, timeout=30) as client:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(
            body=st.one_of(raw_body, multipart_body(), valid_body),
            query=params,
            path=st.sampled_from(["/v1/detect", "/v1/detect", "/v1/detect/render"]),
            chunked=st.booleans(),
        )
        def one_request(body: tuple[bytes, str], query: dict[str, str], path: str, chunked: bool) -> None:
            data, content_type = body
            content = iter([data[: len(data) // 2], data[len(data) // 2 :]]) if chunked else data
            response = client.post(path, params=query, content=content, headers={"Content-Type": content_type})
            SEEN[response.status_code] += 1
            assert response.status_code < 500, response.text
            if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
                error = response.json()["error"]
                assert isinstance(error["code"], str) and isinstance(error["message"], str)

        one_request()
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    assert live_service.process.poll() is None
    print(f"\nfuzz: statuses seen {dict(sorted(SEEN.items()))}")
