"""The memory budget for decoded pixels: the queue that shares it (first come, first served, bounded waits), how it is
sized from the memory limit, and the service keeping every protocol's requests within it (503 + Retry-After while it
is taken, 413 for a request larger than all of it), with fake models."""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.errors import MemoryBusy, OverMemoryBudget
from api.main import create_app
from api.memory import (
    BYTES_PER_PIXEL,
    PIXEL_SHARE,
    PixelBudget,
    memory_limit,
    physical_memory,
    pixel_budget,
    resident_memory,
)
from api.settings import Settings
from tests.support import GatedModel, encode, random_rgb

# --- the queue ------------------------------------------------------------------------------------------------------


def run(scenario) -> None:
    asyncio.run(scenario())


async def settle() -> None:
    """Let every ready task run (grants are delivered through futures)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_that_fit_are_granted_at_once() -> None:
    seen: list[int] = []

    async def scenario() -> None:
        budget = PixelBudget(100, max_waiting=4, on_change=seen.append)
        await budget.acquire(60, timeout_s=0)
        await budget.acquire(40, timeout_s=0)
        assert (budget.in_use, budget.waiting) == (100, 0)
        budget.release(60)
        budget.release(40)
        assert budget.in_use == 0

    run(scenario)
    assert seen == [60, 100, 40, 0]


def test_a_request_waits_until_its_pixels_are_released() -> None:
    async def scenario() -> None:
        budget = PixelBudget(100, max_waiting=4)
        await budget.acquire(60, timeout_s=0)
        waiting = asyncio.create_task(budget.acquire(50, timeout_s=10))
        await settle()
        assert not waiting.done() and budget.waiting == 1
        budget.release(60)
        await asyncio.wait_for(waiting, 1)
        assert (budget.in_use, budget.waiting) == (50, 0)

    run(scenario)


def test_first_come_first_served_a_small_request_does_not_overtake() -> None:
    order: list[str] = []

    async def scenario() -> None:
        budget = PixelBudget(100, max_waiting=4)
        await budget.acquire(90, timeout_s=0)

        async def request(name: str, pixels: int) -> None:
            await budget.acquire(pixels, timeout_s=10)
            order.append(name)

        large = asyncio.create_task(request("large", 60))
        await settle()
        small = asyncio.create_task(request("small", 5))  # would fit beside the 90, but the large one came first
        await settle()
        assert order == [] and budget.waiting == 2
        budget.release(90)
        await asyncio.wait_for(asyncio.gather(large, small), 1)
        assert budget.in_use == 65

    run(scenario)
    assert order == ["large", "small"]


def test_waiting_past_the_deadline_is_memory_busy_and_reserves_nothing() -> None:
    async def scenario() -> None:
        budget = PixelBudget(100, max_waiting=4)
        await budget.acquire(100, timeout_s=0)
        with pytest.raises(MemoryBusy) as caught:
            await budget.acquire(1, timeout_s=0.02)
        assert caught.value.message == (
            "the memory for decoding stayed in use until the request's deadline; retry shortly"
        )
        assert (caught.value.status, caught.value.code, caught.value.retry_after) == (503, "memory_busy", 1)
        assert (budget.in_use, budget.waiting) == (100, 0)

    run(scenario)


def test_the_head_giving_up_lets_the_next_in() -> None:
    async def scenario() -> None:
        budget = PixelBudget(100, max_waiting=4)
        await budget.acquire(60, timeout_s=0)
        impatient = asyncio.create_task(budget.acquire(50, timeout_s=0.02))
        await settle()
        patient = asyncio.create_task(budget.acquire(30, timeout_s=10))
        with pytest.raises(MemoryBusy):
            await impatient
        await asyncio.wait_for(patient, 1)  # 60 + 30 fit: nothing is released, the head just left
        assert budget.in_use == 90

    run(scenario)


def test_a_cancelled_wait_reserves_nothing() -> None:
    async def scenario() -> None:
        budget = PixelBudget(100, max_waiting=4)
        await budget.acquire(100, timeout_s=0)
        waiting = asyncio.create_task(budget.acquire(10, timeout_s=10))
        await settle()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert budget.waiting == 0
        budget.release(100)
        assert budget.in_use == 0

    run(scenario)


def test_more_than_the_whole_budget_is_413_at_once() -> None:
    async def scenario() -> None:
        budget = PixelBudget(100, max_waiting=4)
        with pytest.raises(OverMemoryBudget) as caught:
            await budget.acquire(101, timeout_s=10)
        assert caught.value.message == (
            "the images have 101 pixels together; this service decodes at most 100 at once: "
            "send fewer or smaller images per request"
        )
        assert (caught.value.status, caught.value.code) == (413, "over_memory_budget")

    run(scenario)


def test_too_many_waiting_is_memory_busy_at_once() -> None:
    async def scenario() -> None:
        budget = PixelBudget(100, max_waiting=1)
        await budget.acquire(100, timeout_s=0)
        waiting = asyncio.create_task(budget.acquire(10, timeout_s=10))
        await settle()
        started = time.monotonic()
        with pytest.raises(MemoryBusy, match=r"^1 requests are already waiting for memory to decode; retry shortly$"):
            await budget.acquire(10, timeout_s=10)
        assert time.monotonic() - started < 1
        waiting.cancel()

    run(scenario)


def test_invariant_never_over_capacity_and_granted_in_arrival_order() -> None:
    """200 requests of random sizes, holding their pixels for random numbers of loop turns, some giving up: the
    reserved pixels never exceed the capacity, and grants come in the order the requests began waiting."""
    rng = random.Random(17)
    capacity = 1000
    levels: list[int] = []
    granted: list[int] = []

    async def scenario() -> None:
        budget = PixelBudget(capacity, max_waiting=1000, on_change=levels.append)

        async def request(index: int, pixels: int, hold: int, timeout_s: float) -> None:
            try:
                await budget.acquire(pixels, timeout_s)
            except MemoryBusy:
                return
            granted.append(index)
            for _ in range(hold):
                await asyncio.sleep(0)
            budget.release(pixels)

        tasks = []
        for index in range(200):
            pixels = rng.randint(1, capacity)
            tasks.append(asyncio.create_task(request(index, pixels, rng.randint(0, 5), rng.choice([0.0, 10.0]))))
            await asyncio.sleep(0)  # each task starts (and joins the queue) before the next is created
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert (budget.in_use, budget.waiting) == (0, 0)

    run(scenario)
    assert max(levels) <= capacity and levels[-1] == 0
    assert len(granted) > 50  # about half wait up to 10 s, the others give up at once if they must wait
    # Those that waited were granted in arrival order (those granted at once came when nobody waited).
    assert granted == sorted(granted)


# --- sizing ---------------------------------------------------------------------------------------------------------


def test_the_limit_is_the_cgroup_s_else_the_machine_s(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    assert memory_limit((v2, v1)) == physical_memory()  # neither file
    v2.write_text("max\n")
    v1.write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    assert memory_limit((v2, v1)) == physical_memory()
    v2.write_text(f"{2 << 30}\n")
    assert memory_limit((v2, v1)) == 2 << 30
    v2.unlink()
    v1.write_text(f"{512 << 20}\n")
    assert memory_limit((v2, v1)) == 512 << 20


def test_budget_is_a_share_of_what_is_left_after_loading() -> None:
    limit, loaded = 2 << 30, 210 << 20
    assert pixel_budget(limit, loaded) == int((limit - loaded) * PIXEL_SHARE) // BYTES_PER_PIXEL
    assert 400_000_000 < pixel_budget(limit, loaded) < 500_000_000  # one 16 × 5000×5000 request at a time
    assert pixel_budget(limit, limit + 1) == 0


def test_resident_memory_reads_vmrss(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  900 kB\nVmRSS:\t  812 kB\n")
    assert resident_memory(status) == 812 * 1024
    assert resident_memory(tmp_path / "missing") == 0
    assert resident_memory() > 0


def test_the_setting_must_hold_one_image_of_the_pixel_limit() -> None:
    assert Settings(max_pixels=100, max_inflight_pixels=100).max_inflight_pixels == 100
    with pytest.raises(ValueError, match="must be at least max_pixels \\(100\\)"):
        Settings(max_pixels=100, max_inflight_pixels=99)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings(max_inflight_pixels=0)


# --- the service ----------------------------------------------------------------------------------------------------

IMAGE = encode(random_rgb(100, 60))  # 6,000 pixels
HALF = encode(random_rgb(50, 40))  # 2,000 pixels
BUDGET = 10_000


@pytest.fixture
def model() -> Iterator[GatedModel]:
    gated = GatedModel()
    yield gated
    gated.gate.set()


@pytest.fixture
def client(model: GatedModel) -> Iterator[TestClient]:
    options = {"threads": 1, "max_wait_ms": 0, "drain_delay_s": 0, "request_timeout_s": 0.5}
    app = create_app(Settings(**options, max_pixels=BUDGET, max_inflight_pixels=BUDGET), detector=model)
    with TestClient(app) as c:
        yield c


def post_png(client: TestClient, *images: bytes, path: str = "/v1/detect"):
    return client.post(path, files=[("image", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)])


def in_use(client: TestClient) -> int:
    return client.app.state.service.pixels.in_use


def wait_until_free(client: TestClient) -> None:
    """The pixels are freed in a thread of their own, then given back: wait for that."""
    deadline = time.monotonic() + 5
    while in_use(client) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert in_use(client) == 0


def in_background(call) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    return thread, result


def test_a_request_beyond_the_budget_waits_then_503_with_retry_after(client: TestClient, model: GatedModel) -> None:
    first, answer = in_background(lambda: post_png(client, IMAGE))
    assert model.entered.wait(5)  # the first request holds 6,000 pixels in the model
    assert in_use(client) == 6000
    started = time.monotonic()
    response = post_png(client, IMAGE)  # 6,000 more do not fit: it waits for its deadline (0.5 s)
    assert time.monotonic() - started >= 0.45
    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "code": "memory_busy",
            "message": "the memory for decoding stayed in use until the request's deadline; retry shortly",
        }
    }
    assert response.headers["retry-after"] == "1"
    first.join(5)
    assert answer[0].status_code == 504  # its deadline passed too, in the model
    time.sleep(0.05)
    assert in_use(client) == 6000  # the model still works on its pixels: they are not given back yet
    model.gate.set()
    wait_until_free(client)
    assert post_png(client, IMAGE).status_code == 200
    metrics = client.get("/metrics").text
    assert 'detector_rejections_total{reason="memory_busy"} 1.0' in metrics
    assert "detector_pixel_budget 10000.0" in metrics


def test_a_waiting_request_goes_on_when_pixels_are_given_back(client: TestClient, model: GatedModel) -> None:
    first, first_answer = in_background(lambda: post_png(client, IMAGE))
    assert model.entered.wait(5)
    second, second_answer = in_background(lambda: post_png(client, IMAGE))
    deadline = time.monotonic() + 5
    while client.app.state.service.pixels.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    model.gate.set()
    first.join(5)
    second.join(5)
    assert [first_answer[0].status_code, second_answer[0].status_code] == [200, 200]


def test_a_request_larger_than_the_whole_budget_is_413_in_each_protocol(client: TestClient) -> None:
    message = (
        "the images have 12000 pixels together; this service decodes at most 10000 at once: "
        "send fewer or smaller images per request"
    )
    response = post_png(client, IMAGE, IMAGE)
    assert (response.status_code, response.json()) == (
        413,
        {"error": {"code": "over_memory_budget", "message": message}},
    )
    data = [base64.b64encode(IMAGE).decode()] * 2
    request = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": data}]}
    response = client.post("/v2/models/gated/infer", json=request)
    assert (response.status_code, response.json()) == (413, {"error": message})
    assert in_use(client) == 0


def test_deepstack_waits_and_answers_503_in_its_own_shape(client: TestClient, model: GatedModel) -> None:
    first, _ = in_background(lambda: post_png(client, IMAGE))
    assert model.entered.wait(5)
    response = client.post("/v1/vision/detection", files={"image": ("a.png", IMAGE, "image/png")})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json() == {
        "success": False,
        "error": "the memory for decoding stayed in use until the request's deadline; retry shortly",
        "duration": 0,
    }
    model.gate.set()
    first.join(5)
    wait_until_free(client)


def test_concurrent_requests_within_the_budget_all_succeed(client: TestClient, model: GatedModel) -> None:
    threads = [in_background(lambda: post_png(client, HALF)) for _ in range(4)]  # 4 × 2,000 ≤ 10,000
    deadline = time.monotonic() + 5
    while in_use(client) < 8000 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert in_use(client) == 8000  # all four hold their pixels at once, none waits
    model.gate.set()
    for thread, _ in threads:
        thread.join(5)
    assert [answer[0].status_code for _, answer in threads] == [200] * 4
    wait_until_free(client)


def test_render_holds_the_pixels_until_drawn_then_gives_them_back(client: TestClient, model: GatedModel) -> None:
    model.gate.set()
    response = client.post("/v1/detect/render", content=IMAGE, headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    wait_until_free(client)
