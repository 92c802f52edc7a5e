"""What the fuzzer feeds broken files to, and how it names what happened.

- :func:`load_outcome`: ``load_image`` on the bytes: ``decoded``, ``ImageError: <reason>`` or ``other: <type>`` (a
  bug: an exception that is not an ``ImageError``); intact cases must decode to the seed's pixels;
- :func:`run_cli`: the ``detector`` command in this process (its exit status, stdout and stderr), as a user runs it;
- :func:`tiny_weights`: a small random model (96-pixel input, width 0.35), so that ``detect`` and ``evaluate``
  cost milliseconds per image;
- :func:`write_coco`: a COCO annotation file over a folder of files, for ``detector evaluate``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from detector.errors import ImageError
from detector.images import load_image
from tests.fuzz.mutations import Case, Seed

LABELS = ("background", "person", "cat", "cup")


def reason_kind(message: str) -> str:
    """An ImageError's message without the file name and the decoder's own words: its kind."""
    kind = message.split(": ", 1)[0]
    return re.sub(r"\d[\d,]*", "N", kind)


def load_outcome(case: Case) -> str:
    """What ``load_image`` makes of ``case``: ``decoded``, ``ImageError: <kind>``, ``other: <type>``, or
    ``wrong pixels`` for an intact case that did not decode to its seed's pixels (upright or not)."""
    try:
        pixels = load_image(case.data)
    except ImageError as exc:
        return f"ImageError: {reason_kind(str(exc))}"
    except Exception as exc:  # what the fuzzer is here to find
        return f"other: {type(exc).__name__}: {str(exc)[:80]}"
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        return f"other: bad array {pixels.dtype} {pixels.shape}"
    if case.intact and not any(np.array_equal(pixels, view) for view in orientations(case.seed)):
        return "wrong pixels"
    return "decoded"


@cache
def orientations(seed: Seed) -> tuple[np.ndarray, ...]:
    """The seed's pixels in each of the eight EXIF orientations (the same eight from the upright picture as from
    the stored one: turns and flips form a group)."""
    upright = load_image(seed.data)
    views = []
    for turns in range(4):
        turned = np.rot90(upright, turns)
        views += [turned, turned[:, ::-1]]
    return tuple(views)


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """``detector ARGV`` in this process: (exit status, stdout, stderr)."""
    from detector.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def tiny_weights(path: Path) -> Path:
    """A random model small enough to run thousands of images in seconds, written to ``path``."""
    import torch

    from detector.spec import ModelSpec
    from detector.weights import build_model, save_weights

    torch.manual_seed(0)
    spec = ModelSpec(num_classes=len(LABELS), labels=LABELS, image_size=96, width_mult=0.35, source="fuzz tests")
    save_weights(path, build_model(spec), spec)
    return path


def write_coco(folder: Path, files: Sequence[Path], sizes: Sequence[tuple[int, int]], out: Path) -> Path:
    """A COCO file with one image entry per file (``sizes``: width, height as annotated) and one box each."""
    images = [
        {"id": i + 1, "file_name": str(file.relative_to(folder)), "width": w, "height": h}
        for i, (file, (w, h)) in enumerate(zip(files, sizes, strict=True))
    ]
    annotations = [
        {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, max(1, w // 2), max(1, h // 2)]}
        for i, (w, h) in enumerate(sizes)
    ]
    categories = [{"id": i, "name": name} for i, name in enumerate(LABELS) if i]
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out
