"""The page at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright): a person picks a
real photo and sees it with the boxes drawn.

Needs ``/usr/bin/chromium`` (``make browser`` installs it; ``make test`` depends on that). Playwright's own browser
downloads are never used.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from detector.samples import photo

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PERSON_COLOUR = (86, 180, 233)  # the page's colour for class id 1


def test_the_page_draws_boxes_on_a_dropped_photo(live_service, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (run `make browser`, which uses apt-get)")
    from playwright.sync_api import sync_playwright

    picture = photo("grace_hopper.jpg")
    expected = httpx.post(
        f"{live_service.url}/v1/detect", content=picture.read_bytes(), headers={"Content-Type": "image/jpeg"}
    ).json()["results"][0]["detections"]
    assert expected, "the model should find Grace Hopper"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requested: list[str] = []
            errors: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{live_service.url}/")
            page.set_input_files("#file", str(picture))
            page.wait_for_selector("#canvas[data-state=done]", timeout=60_000)

            assert int(page.get_attribute("#canvas", "data-boxes")) == len(expected)
            assert page.locator("#detections tbody tr").count() == len(expected)
            assert "person" in page.inner_text("#detections")
            assert page.inner_text("#status").startswith(f"{len(expected)} detection")
            size = page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
            assert size == [512, 600]
            # The box's left edge is drawn in the person colour, halfway down the box.
            x1, y1, _, y2 = expected[0]["box"]
            pixels = page.evaluate(
                """([x, y]) => Array.from(document.getElementById('canvas').getContext('2d')
                     .getImageData(x - 1, y, 3, 1).data)""",
                [round(x1), round((y1 + y2) / 2)],
            )
            colours = [tuple(pixels[i : i + 3]) for i in range(0, len(pixels), 4)]
            assert any(max(abs(a - b) for a, b in zip(c, PERSON_COLOUR, strict=True)) <= 8 for c in colours), colours
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert errors == []
            assert all(url.startswith(live_service.url) for url in requested), requested  # no external assets
        finally:
            browser.close()
