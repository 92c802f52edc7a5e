"""The GPU pipeline (detector/gpu) run on the CPU: its arithmetic against the references, every kind of input, and
its wiring into ``detector detect``, evaluation and the service's batch protocol.

Tolerances, from issue 19: the resize within 1e-4 grey levels of ``preprocess(exact=True)`` (it is bit-identical);
post-processing with numpy's keep lists and boxes within 1e-4; whole-pipeline detections equal to the detector's
(same labels, boxes within 1e-3 px, scores within 1e-5), and a bad file loses only itself, with today's error.
The GPU itself is measured by benchmarks/gpu_pipeline.py.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector import postprocess as numpy_postprocess
from detector.builtin import resolve_weights
from detector.cli import build_parser, main
from detector.cli.detect_gpu import gpu_detection_loop
from detector.cli.detect_run import run as run_detect
from detector.errors import ImageError
from detector.gpu import postprocess as gpu_postprocess
from detector.gpu.jpeg import EncodedJpeg, JpegDecoder, prepare_image
from detector.gpu.pipeline import GpuPipeline
from detector.gpu.resize import preprocess_images
from detector.images import load_image
from detector.preprocess import preprocess
from detector.samples import PHOTOS, photo
from detector.weights import read_spec

TF_TO_OURS = [1, 0, 3, 2]  # [ty, tx, th, tw] → [tx, ty, tw, th]; [ymin, xmin, ymax, xmax] → xyxy
THRESHOLDS = (1e-8, 0.01, 0.5)
CLIPPING = ("before_nms", "after_nms")


def _encode(pixels: np.ndarray | Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _damaged(data: bytes) -> bytes:
    """A JPEG with every header right (the device takes it) and damaged entropy-coded data: libjpeg-turbo refuses
    the grace_hopper.jpg frames so damaged, through Pillow, TorchCodec and torchvision alike."""
    damaged = bytearray(data)
    middle = len(data) // 2
    for i in range(middle, middle + 400, 3):
        damaged[i] ^= 0xFF
    return bytes(damaged)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: load_image(photo(name)) for name in PHOTOS}


def _same_detections(ours, reference, pixel_tolerance: float = 1e-3, score_tolerance: float = 1e-5) -> None:
    assert (ours.width, ours.height) == (reference.width, reference.height)
    assert [d.class_id for d in ours.detections] == [d.class_id for d in reference.detections]
    for a, b in zip(ours.detections, reference.detections, strict=True):
        assert np.abs(np.subtract(a.box, b.box)).max() <= pixel_tolerance
        assert abs(a.score - b.score) <= score_tolerance


# --- the resize ----------------------------------------------------------------------------------------------------


def test_resize_is_the_exact_reference_on_photographs_and_odd_sizes(photos):
    rng = np.random.default_rng(1)
    shapes = [(480, 640), (720, 1280), (123, 457), (1080, 810), (299, 301), (601, 599), (300, 300), (2, 3), (1, 1)]
    arrays = [*photos.values(), *(rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes)]
    images = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]  # every size in one batch
    grey_levels = preprocess_images(images, 300, 1.0, 0.0).numpy()
    reference = preprocess(arrays, 300, 1.0, 0.0, exact=True)
    assert np.abs(grey_levels - reference).max() <= 1e-4
    assert np.array_equal(grey_levels, reference)  # in fact bit for bit
    assert np.array_equal(preprocess_images(images, 300, 2 / 255, -1.0).numpy(), preprocess(arrays, exact=True))


# --- post-processing -------------------------------------------------------------------------------------------------


def _assert_same_raw(ours, reference) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        assert a.labels.tolist() == b.labels.tolist()
        assert a.boxes.shape == b.boxes.shape and np.abs(a.boxes - b.boxes).max(initial=0.0) <= 1e-4
        assert np.abs(a.scores - b.scores).max(initial=0.0) <= 1e-6


@pytest.mark.parametrize(("threshold", "clip"), list(itertools.product(THRESHOLDS, CLIPPING)))
def test_postprocess_equals_numpy_on_tensorflow_raw_outputs(golden, threshold, clip):
    tensors, metadata = golden
    names = sorted(metadata["images"])
    codes = np.stack([tensors[f"{name}/box_encodings"][:, TF_TO_OURS] for name in names])
    logits = np.stack([tensors[f"{name}/class_logits"] for name in names])
    anchors = tensors["anchors"][:, TF_TO_OURS]
    options = {"score_threshold": threshold, "clip_boxes": clip}
    reference = numpy_postprocess.postprocess(codes, logits, anchors, **options)
    ours = gpu_postprocess.postprocess(
        torch.from_numpy(codes), torch.from_numpy(logits), torch.from_numpy(anchors), **options
    )
    _assert_same_raw(ours, reference)
    assert sum(len(r.scores) for r in reference) > 0


@pytest.mark.parametrize(("threshold", "clip"), list(itertools.product(THRESHOLDS, CLIPPING)))
def test_selection_equals_numpy_on_tfjs_scores_with_unused_classes(tfjs_golden, threshold, clip):
    tensors, metadata = tfjs_golden
    names = sorted(metadata["images"])
    scores = np.stack([tensors[f"{name}/scores"] for name in names])
    boxes = np.stack([tensors[f"{name}/boxes"][:, TF_TO_OURS] for name in names])
    reported = numpy_postprocess.reported_classes(read_spec(resolve_weights("coco")).labels)
    options = {"score_threshold": threshold, "clip_boxes": clip, "reported": reported}
    reference = numpy_postprocess.select_detections(scores, lambda image, anchor: boxes[image, anchor], **options)
    ours = gpu_postprocess.select_detections(torch.from_numpy(scores), torch.from_numpy(boxes), **options)
    _assert_same_raw(ours, reference)


def test_a_short_list_of_duplicates_falls_back_to_every_candidate():
    # 1000 copies of one box: the short list (400) keeps one survivor, so the far box must still be found.
    boxes = np.concatenate([np.tile([[0.1, 0.1, 0.4, 0.4]], (1000, 1)), [[0.6, 0.6, 0.9, 0.9]]]).astype(np.float32)
    scores = np.concatenate([np.linspace(0.9, 0.5, 1000), [0.1]]).astype(np.float32)[:, None]
    (ours,) = gpu_postprocess.select_detections(
        torch.from_numpy(scores)[None], torch.from_numpy(boxes)[None], score_threshold=0.01, max_detections=10
    )
    assert ours.scores.tolist() == pytest.approx([0.9, 0.1])
    assert ours.boxes[1].tolist() == pytest.approx([0.6, 0.6, 0.9, 0.9])


def test_nms_keeps_images_and_classes_apart_even_far_outside_the_image():
    # The same box in two images and two classes, and boxes reaching far below -1 (unclipped): nothing suppressed
    # across images or classes; the copy of a box in one image and class is.
    box = [-3.0, -2.5, 0.5, 0.4]
    boxes = torch.tensor([[box, box, [0.2, 0.2, 0.3, 0.3]]] * 2, dtype=torch.float32)  # (2 images, 3 anchors, 4)
    scores = torch.tensor([[[0.9, 0.8], [0.7, 0.6], [0.1, 0.0]]] * 2, dtype=torch.float32)  # (2, 3, 2 classes)
    results = gpu_postprocess.select_detections(scores, boxes, score_threshold=0.05, clip_boxes="after_nms")
    for raw in results:
        assert raw.labels.tolist() == [1, 2, 1]  # anchor 0 in both classes; its copy (anchor 1) suppressed
        assert raw.scores.tolist() == pytest.approx([0.9, 0.8, 0.1])


# --- JPEGs ------------------------------------------------------------------------------------------------------------


def test_which_jpegs_the_device_decodes_and_the_cpu_path_with_its_errors(photos, tmp_path):
    pixels = photos["grace_hopper.jpg"]
    baseline = _encode(pixels, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    on_device = {
        "baseline": baseline,
        "4:4:4": _encode(pixels, quality=90, subsampling=0),
        "gray": _encode(pixels[..., 0]),
        "damaged scan": _damaged(baseline),  # the header is fine: only decoding finds out
    }
    on_cpu = {
        "png": _encode(pixels, "PNG"),
        "progressive": _encode(pixels, quality=90, progressive=True),
        "cmyk": _encode(Image.fromarray(pixels).convert("CMYK"), quality=90),
        "rotated": _encode(pixels, quality=90, exif=exif),
        "data after the end": baseline + b"trailer",
    }
    failing = {"truncated": baseline[: len(baseline) // 2], "not an image": b"GIF? no", "empty": b""}
    for name, data in on_device.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        prepared = prepare_image(str(path))
        assert isinstance(prepared, EncodedJpeg), name
        assert (prepared.height, prepared.width) == pixels.shape[:2]
    for name, data in on_cpu.items():
        prepared = prepare_image(data)
        assert isinstance(prepared, np.ndarray) and np.array_equal(prepared, load_image(data)), name
    for name, data in {**failing, "missing": None}.items():
        source = str(tmp_path / f"{name}.jpg")
        if data is not None:
            Path(source).write_bytes(data)
        with pytest.raises(ImageError) as ours:
            prepare_image(source)
        with pytest.raises(ImageError) as today:
            load_image(source)
        assert str(ours.value) == str(today.value), name


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 deprecates its decoders
@pytest.mark.parametrize("library", ["torchcodec", "torchvision"])
def test_decoders_give_the_cpu_paths_pixels(library, photos):
    if library == "torchcodec":
        pytest.importorskip("torchcodec")
    decoder = JpegDecoder("cpu", library)
    encoded, expected = [], []
    for pixels, subsampling in zip(photos.values(), itertools.cycle((0, 1, 2)), strict=False):
        data = _encode(pixels, quality=90, subsampling=subsampling)
        encoded.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        expected.append(load_image(data))
    bad = torch.frombuffer(bytearray(_damaged(_encode(photos["grace_hopper.jpg"], quality=90))), dtype=torch.uint8)
    decoded = decoder([*encoded[:2], bad, *encoded[2:]])
    assert decoded[2] is None  # the bad one fails alone: the others still decode, in order
    for image, pixels in zip(decoded[:2] + decoded[3:], expected, strict=True):
        assert image is not None and np.array_equal(image.permute(1, 2, 0).numpy(), pixels)


# --- the pipeline --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, photos) -> Path:
    """Camera-sized JPEGs and every other kind of input: PNG, gray, progressive, CMYK, EXIF-rotated, damaged."""
    root = tmp_path_factory.mktemp("mixed")
    exif = Image.Exif()
    exif[0x0112] = 8
    frames = {name: np.asarray(Image.fromarray(p).resize((320, 240))) for name, p in photos.items()}
    files = {
        "a_rocket.jpg": _encode(frames["rocket.jpg"], quality=90),
        "b_astronaut.jpg": _encode(frames["astronaut.png"], quality=90),
        "c_coffee.png": _encode(frames["coffee.png"], "PNG"),
        "d_damaged.jpg": _damaged(_encode(frames["grace_hopper.jpg"], quality=90)),
        "e_gray.jpg": _encode(frames["chelsea.png"][..., 1], quality=90),
        "f_progressive.jpg": _encode(frames["motorcycle_left.png"], quality=90, progressive=True),
        "g_cmyk.jpg": _encode(Image.fromarray(frames["grace_hopper.jpg"]).convert("CMYK"), quality=90),
        "h_rotated.jpg": _encode(frames["motorcycle_left.png"], quality=90, exif=exif),
        "i_truncated.jpg": _encode(frames["rocket.jpg"], quality=90)[:2000],
        "j_camera.jpg": _encode(frames["camera.png"], quality=90),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_pipeline_over_a_mixed_folder_equals_the_detector_and_bad_files_lose_only_themselves(
    coco_detector, mixed_folder
):
    files = sorted(str(p) for p in mixed_folder.iterdir())
    pipeline = GpuPipeline(coco_detector, readers=2, prefetch=1)
    batches = [files[i : i + 4] for i in range(0, len(files), 4)]
    outcomes = [
        o for batch in pipeline.run(batches, prepare_image, score_threshold=0.3, keep_pixels=True) for o in batch
    ]
    decoded = {}
    for file, outcome in zip(files, outcomes, strict=True):
        try:
            decoded[file] = load_image(file)
        except ImageError as exc:
            assert outcome.detections is None and str(outcome.error) == str(exc), file
            continue
        assert outcome.error is None and np.array_equal(outcome.pixels, decoded[file]), file
    arrays = list(decoded.values())
    codes, logits = coco_detector.model_outputs(coco_detector.preprocess(arrays, exact=True))
    references = coco_detector.postprocess(codes, logits, [a.shape[:2] for a in arrays], score_threshold=0.3)
    for file, reference in zip(decoded, references, strict=True):
        _same_detections(outcomes[files.index(file)].detections, reference)
    assert len(decoded) == len(files) - 2 and sum(len(r.detections) for r in references) > 0


def test_pipeline_serves_the_batchers_protocol(coco_detector, photos):
    """What the service's batcher calls, with slices of one forward pass per request."""
    pipeline = GpuPipeline(coco_detector)
    arrays = list(photos.values())[:4]
    codes, logits = pipeline.predict_raw(pipeline.preprocess(arrays))
    sizes = [a.shape[:2] for a in arrays]
    ours = pipeline.postprocess(codes[:1], logits[:1], sizes[:1], score_threshold=0.3)
    ours += pipeline.postprocess(codes[1:], logits[1:], sizes[1:], score_threshold=0.3, max_detections=2)
    reference_codes, reference_logits = coco_detector.model_outputs(coco_detector.preprocess(arrays, exact=True))
    reference = coco_detector.postprocess(reference_codes[:1], reference_logits[:1], sizes[:1], score_threshold=0.3)
    reference += coco_detector.postprocess(
        reference_codes[1:], reference_logits[1:], sizes[1:], score_threshold=0.3, max_detections=2
    )
    for a, b in zip(ours, reference, strict=True):
        _same_detections(a, b)
    assert pipeline.info().backend_engine["pipeline"] == "gpu"


def test_detect_on_the_gpu_loop_writes_the_cpu_loops_records(mixed_folder, tmp_path, capsys):
    common = [str(mixed_folder), "--weights", "coco", "--backend", "torch", "--score-threshold", "0.3"]
    common += ["--batch-size", "4", "--no-progress"]
    assert main(["detect", *common, "--out", str(tmp_path / "cpu.jsonl")]) == 1  # two bad files
    args = build_parser().parse_args(["detect", *common, "--out", str(tmp_path / "gpu.jsonl")])
    assert run_detect(args, gpu_detection_loop) == 1
    capsys.readouterr()
    cpu, gpu = (
        [json.loads(line) for line in (tmp_path / f).read_text().splitlines()] for f in ("cpu.jsonl", "gpu.jsonl")
    )
    assert [r["file"] for r in gpu] == [r["file"] for r in cpu]
    for a, b in zip(gpu, cpu, strict=True):
        assert a.get("error") == b.get("error")
        assert [d["label"] for d in a.get("detections", [])] == [d["label"] for d in b.get("detections", [])]
        for x, y in zip(a.get("detections", []), b.get("detections", []), strict=True):
            # The CPU loop resizes with OpenCV's remap (3.5e-5 grey levels off the exact resize the GPU runs).
            assert np.abs(np.subtract(x["box"], y["box"])).max() < 0.05 and abs(x["score"] - y["score"]) < 1e-3


def test_evaluation_on_the_pipeline_equals_the_dataloaders(coco_detector, photos, tmp_path, monkeypatch):
    """``detect_dataset`` on the pipeline (what ``--device cuda`` runs) against the DataLoader path, with the same
    read notes: a gray JPEG is converted, an EXIF-rotated one annotated unrotated is read as stored."""
    from detector.training import pipeline as loader_pipeline
    from detector.training.coco import load_dataset
    from detector.training.evaluate import detect_dataset, match_categories

    # The loader's resize exact too, so that both paths feed the network the same pixels.
    monkeypatch.setattr(loader_pipeline, "preprocess", lambda *a, **k: preprocess(*a, **k, exact=True))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = {name: Image.fromarray(p).resize((200, 150)) for name, p in photos.items()}
    files = {
        "rocket.jpg": _encode(frames["rocket.jpg"], quality=90),
        "motorcycle.jpg": _encode(frames["motorcycle_left.png"], quality=90),
        "gray.jpg": _encode(frames["astronaut.png"].convert("L"), quality=90),
        "rotated.jpg": _encode(frames["grace_hopper.jpg"], quality=90, exif=exif),
        "coffee.png": _encode(frames["coffee.png"], "PNG"),
    }
    images = tmp_path / "images"
    images.mkdir()
    for name, data in files.items():
        (images / name).write_bytes(data)
    document = {
        "images": [{"id": i, "file_name": n, "width": 200, "height": 150} for i, n in enumerate(files, 1)],
        "annotations": [],
        "categories": [{"id": 1, "name": "person"}, {"id": 4, "name": "motorcycle"}, {"id": 47, "name": "cup"}],
    }
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(document))
    dataset = load_dataset(images, annotations, for_training=False, log=lambda _: None)
    mapping = match_categories(coco_detector.labels, dataset.categories).class_to_category
    runs = {
        on_device: detect_dataset(coco_detector, dataset, mapping, batch_size=4, progress=False, on_device=on_device)
        for on_device in (False, True)
    }
    (loader, loader_notes), (ours, our_notes) = runs[False], runs[True]
    assert our_notes == loader_notes == {"converted_rgb": 1, "exif_ignored": 1}
    assert loader is not None and ours is not None and len(ours) == len(loader) > 0
    unmatched = list(loader)
    for det in ours:  # ties in score may swap neighbours: match each to its counterpart
        match = next(
            r
            for r in unmatched
            if (r["image_id"], r["category_id"]) == (det["image_id"], det["category_id"])
            and np.abs(np.subtract(r["bbox"], det["bbox"])).max() <= 0.002
            and abs(r["score"] - det["score"]) <= 2e-6
        )
        unmatched.remove(match)
