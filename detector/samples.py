"""Sample images: real photographs taken from published wheels, and deterministic synthetic scenes.

Photographs are never committed. scikit-image, matplotlib and ultralytics ship a few inside their wheels; the pinned
wheels are fetched with ``pip download --no-deps`` (PyPI is the one source every machine here reaches; nothing is
installed) and only the images are kept, in ``$DETECTOR_SAMPLES_DIR`` (default ``.cache/photos`` at the repository
root of a source checkout, else the weights cache). ``detector backends`` judges reduced-precision engines on them,
the tests and the benchmarks use them, and the golden-file scripts feed them to TensorFlow and TF.js. Only the
standard library and numpy are needed, so the side environments of those scripts can import this module too.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from detector.cache import write_atomic

# name -> (wheel requirement, path inside the wheel); what a person sees in each.
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut.png": ("scikit-image==0.26.0", "skimage/data/astronaut.png"),  # a person, RGB PNG
    "camera.png": ("scikit-image==0.26.0", "skimage/data/camera.png"),  # a person with a camera, grayscale PNG
    "coffee.png": ("scikit-image==0.26.0", "skimage/data/coffee.png"),  # a cup on a table
    "chelsea.png": ("scikit-image==0.26.0", "skimage/data/chelsea.png"),  # a cat
    "motorcycle_left.png": ("scikit-image==0.26.0", "skimage/data/motorcycle_left.png"),  # a motorcycle
    "rocket.jpg": ("scikit-image==0.26.0", "skimage/data/rocket.jpg"),  # a rocket on its pad, JPEG
    "grace_hopper.jpg": ("matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),  # a person
}
# Street scenes with several objects (ultralytics' own sample images, AGPL-3.0 package; fetched, never committed).
STREET_PHOTOS: dict[str, tuple[str, str]] = {
    "bus.jpg": ("ultralytics==8.4.190", "ultralytics/assets/bus.jpg"),  # a bus and four people
    "zidane.jpg": ("ultralytics==8.4.190", "ultralytics/assets/zidane.jpg"),  # two people, a tie
}
ALL_PHOTOS = {**PHOTOS, **STREET_PHOTOS}

_log = logging.getLogger(__name__)

# (name, height, width, seed): one at the network's size (resize is the identity), a landscape one, and an odd one.
SYNTHETIC = (("synthetic_300x300", 300, 300, 1), ("synthetic_480x640", 480, 640, 2), ("synthetic_317x211", 317, 211, 3))


def annotations_file() -> Path | None:
    """The hand-annotated boxes of the sample photographs (COCO format, ``tests/data/sample_photos_coco.json``),
    where this is a source checkout; None elsewhere."""
    path = Path(__file__).resolve().parent.parent / "tests" / "data" / "sample_photos_coco.json"
    return path if path.is_file() else None


def samples_dir() -> Path:
    """Where extracted photographs are kept."""
    if os.environ.get("DETECTOR_SAMPLES_DIR"):
        return Path(os.environ["DETECTOR_SAMPLES_DIR"])
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache" / "photos"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssdlite-detector" / "photos"


def _extract(requirement: str, directory: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, requirement]
        try:
            subprocess.run(command, check=True)
        except subprocess.CalledProcessError as exc:  # no network, no pip (a serving image): an OSError like the rest
            raise OSError(f"cannot fetch {requirement} (pip download exited with {exc.returncode})") from exc
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name, (req, member) in ALL_PHOTOS.items():
                if req == requirement:
                    write_atomic(directory / name, archive.read(member))


def photo(name: str) -> Path:
    """Path of a sample photograph, fetching its wheel on first use."""
    if name not in ALL_PHOTOS:
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(ALL_PHOTOS)}")
    directory = samples_dir()
    path = directory / name
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        _extract(ALL_PHOTOS[name][0], directory)
    return path


def all_photos(names: dict[str, tuple[str, str]] | None = None) -> list[Path]:
    """Paths of the photographs in ``names`` (default: every one), fetched where missing."""
    return [photo(name) for name in names or ALL_PHOTOS]


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """An (H, W, 3) uint8 image: a colour gradient, random rectangles and ellipses, and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0 * xx], axis=2) * 255.0
    for _ in range(12):
        color = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.05, 0.3) * height, rng.uniform(0.05, 0.3) * width
        if rng.random() < 0.5:
            mask = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        else:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        image[mask] = color
    image += rng.normal(0, 6.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def synthetic_images() -> dict[str, np.ndarray]:
    """The :data:`SYNTHETIC` images by name."""
    return {name: synthetic_image(height, width, seed) for name, height, width, seed in SYNTHETIC}


def people_mosaic() -> np.ndarray:
    """Three photographs with a person each, side by side (512×1536 RGB): several detections in one image."""
    from detector.images import load_image

    tiles = [load_image(photo(name))[:512, :512] for name in ("astronaut.png", "camera.png", "grace_hopper.jpg")]
    return np.concatenate(tiles, axis=1)


# The variants of each photograph in the check set, as augmentation pipelines commonly make them: geometry (mirror,
# rotation, rescale, crops), photometry (grey, dark, bright, flat contrast, blur) and compression. Each one moves
# objects to other anchors and scales, so the set probes far more of the network than the photographs alone.
VARIANTS = (
    "mirrored", "rot90", "rot270", "x0.5", "x0.75", "x1.25", "x1.5", "crop", "left", "right", "top", "bottom",
    "gray", "dark", "bright", "flat", "blur", "jpeg30", "mirrored:x0.75", "mirrored:gray", "mirrored:crop",
    "mirrored:dark", "mirrored:x0.5", "mirrored:x1.5", "mirrored:blur", "mirrored:bright", "mirrored:jpeg30",
    "rot90:x0.75", "x0.75:jpeg30", "crop:bright",
)  # fmt: skip


def variant(pixels: np.ndarray, name: str) -> np.ndarray:
    """``pixels`` (RGB uint8) transformed by ``name``: one of :data:`VARIANTS`' steps, or several joined by ":"."""
    from PIL import Image, ImageFilter

    from detector.images import load_image

    for step in name.split(":"):
        height, width = pixels.shape[:2]
        if step == "mirrored":
            pixels = pixels[:, ::-1]
        elif step in ("rot90", "rot270"):
            pixels = np.rot90(pixels, 1 if step == "rot90" else 3)
        elif step.startswith("x"):
            factor = float(step[1:])
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
        elif step == "crop":  # centre 60 %
            top, left = round(height * 0.2), round(width * 0.2)
            pixels = pixels[top : height - top, left : width - left]
        elif step in ("left", "right", "top", "bottom"):  # two thirds of the frame
            pixels = {
                "left": pixels[:, : width * 2 // 3],
                "right": pixels[:, width // 3 :],
                "top": pixels[: height * 2 // 3],
                "bottom": pixels[height // 3 :],
            }[step]
        elif step == "gray":
            luma = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            pixels = np.repeat(np.rint(luma)[..., None], 3, axis=2)
        elif step in ("dark", "bright", "flat"):
            values = pixels.astype(np.float32)
            values = {"dark": values * 0.6, "bright": values * 1.3 + 10, "flat": 0.5 * values + 64}[step]
            pixels = np.clip(np.rint(values), 0, 255)
        elif step == "blur":
            pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.5)))
        elif step == "jpeg30":
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=30)
            pixels = load_image(buffer.getvalue())
        else:
            raise ValueError(f"unknown variant step {step!r}")
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return pixels


def check_images() -> dict[str, np.ndarray]:
    """Images to judge reduced-precision engines on: every sample photograph and its :data:`VARIANTS`, the
    synthetic scenes and the people mosaic (9 × 31 + 4 = 283 images), decoded as ``detector.images`` decodes.

    The street photographs are left out where they cannot be had (the serving image does not ship them: AGPL-3.0),
    which leaves 221 images; the others must be there (OSError otherwise).
    """
    from detector.images import load_image

    images: dict[str, np.ndarray] = {}
    for name in ALL_PHOTOS:
        try:
            path = photo(name)
        except OSError as exc:
            if name not in STREET_PHOTOS:
                raise
            _log.warning("check images without %s: %s", name, exc)
            continue
        pixels = load_image(path)
        images[name] = pixels
        for steps in VARIANTS:
            images[f"{name}:{steps}"] = variant(pixels, steps)
    images.update(synthetic_images())
    images["people_mosaic"] = people_mosaic()
    return images


if __name__ == "__main__":
    for path in all_photos():
        print(path)
