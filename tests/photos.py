"""Real photographs for tests and benchmarks, taken from published wheels instead of being committed.

scikit-image and matplotlib ship a few photographs inside their wheels. We download the pinned wheels with
``pip download --no-deps`` (PyPI is reachable here; nothing is installed) and extract just the images into
``.cache/photos`` at the repository root. Needs only the standard library, so the TensorFlow golden-file script can
use it too.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "photos"

# name -> (wheel requirement, path inside the wheel)
PHOTOS = {
    "astronaut.png": ("scikit-image==0.26.0", "skimage/data/astronaut.png"),  # a person, RGB PNG
    "camera.png": ("scikit-image==0.26.0", "skimage/data/camera.png"),  # a person, grayscale PNG
    "coffee.png": ("scikit-image==0.26.0", "skimage/data/coffee.png"),  # no person
    "chelsea.png": ("scikit-image==0.26.0", "skimage/data/chelsea.png"),  # a cat
    "motorcycle_left.png": ("scikit-image==0.26.0", "skimage/data/motorcycle_left.png"),
    "rocket.jpg": ("scikit-image==0.26.0", "skimage/data/rocket.jpg"),  # JPEG
    "grace_hopper.jpg": ("matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),  # a person, JPEG
}


def _extract(requirement: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, requirement],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name, (req, member) in PHOTOS.items():
                if req == requirement:
                    (CACHE / name).write_bytes(archive.read(member))


def photo(name: str) -> Path:
    """Path of a cached photograph, downloading its wheel on first use."""
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    path = CACHE / name
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        _extract(PHOTOS[name][0])
    return path


def all_photos() -> list[Path]:
    return [photo(name) for name in PHOTOS]


def people_mosaic():
    """Three photographs with a person each, side by side (512×1536 RGB): several detections in one image."""
    import numpy as np

    from detector.images import load_image

    tiles = [load_image(photo(name))[:512, :512] for name in ("astronaut.png", "camera.png", "grace_hopper.jpg")]
    return np.concatenate(tiles, axis=1)


if __name__ == "__main__":
    for path in all_photos():
        print(path)
