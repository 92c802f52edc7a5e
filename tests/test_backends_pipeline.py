"""The request path around the network: fast decoding, preprocessing and a batched postprocess, all exact."""

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detector import images
from detector import preprocess as preprocess_module
from detector.postprocess import postprocess
from detector.preprocess import preprocess, resize_bilinear_legacy
from detector.samples import photo


def _reference_preprocess(arrays, size=300, scale=2.0 / 255.0, offset=-1.0):
    batch = torch.empty((len(arrays), 3, size, size))
    for i, array in enumerate(arrays):
        resized = resize_bilinear_legacy(torch.from_numpy(array).to(torch.float32), (size, size))
        batch[i] = (resized * torch.tensor(scale, dtype=torch.float32) + offset).permute(2, 0, 1)
    return batch


SHAPES = [(480, 640), (720, 1280), (100, 150), (300, 300), (1, 1), (299, 301), (1000, 30), (300, 600)]


def _arrays():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in SHAPES]
    return [*arrays, np.asfortranarray(arrays[0])]  # a non-contiguous layout too


def test_exact_preprocess_is_bit_equal_to_the_tf_resize():
    arrays = _arrays()
    assert np.array_equal(preprocess(arrays, exact=True), _reference_preprocess(arrays).numpy())


def test_fast_preprocess_is_within_3e5_grey_levels_of_the_exact_one():
    pytest.importorskip("cv2")
    arrays = _arrays()
    difference = np.abs(preprocess(arrays) - preprocess(arrays, exact=True)).max()
    assert difference * 255 / 2 < 3.5e-5  # in grey levels: the [-1, 1] input is (x · 2/255 − 1)


def test_the_fast_resize_is_the_one_in_use_here():
    """With OpenCV ≥ 5 the self-check passes, so the tests above exercise the fast path, not its fallback."""
    pytest.importorskip("cv2")
    assert preprocess_module.fast_resize_available()


def test_images_above_the_fast_path_s_size_take_the_reference():
    """Past 1.5 megapixels the reference is the faster resize (it gathers before converting): bit-equal results."""
    pytest.importorskip("cv2")
    large = np.random.default_rng(1).integers(0, 256, (1300, 1200, 3), dtype=np.uint8)
    assert np.array_equal(preprocess([large]), preprocess([large], exact=True))


def test_an_opencv_that_disagrees_falls_back_to_the_exact_resize(monkeypatch, caplog):
    """OpenCV 4.x quantises the weights to 1/32 pixel: the self-check sees it and the reference path takes over."""
    pytest.importorskip("cv2")
    real = preprocess_module._resize_remap
    monkeypatch.setattr(preprocess_module, "_resize_remap", lambda image, size: real(image, size) + np.float32(0.01))
    preprocess_module.fast_resize_available.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="detector.preprocess"):
            arrays = _arrays()
            assert np.array_equal(preprocess(arrays), preprocess(arrays, exact=True))
        assert "0.01 grey levels away" in caplog.text
    finally:
        preprocess_module.fast_resize_available.cache_clear()


@pytest.mark.parametrize("name", ["bus.jpg", "camera.png", "rocket.jpg"])
def test_fast_preprocess_gives_the_network_s_outputs_within_1e4(coco_detector, name):
    """The fast path is pinned to the reference by what the network makes of it: raw outputs within 1e-4."""
    pytest.importorskip("cv2")
    pixels = [images.load_image(photo(name))]
    fast = coco_detector.model_outputs(coco_detector.preprocess(pixels))
    exact = coco_detector.model_outputs(coco_detector.preprocess(pixels, exact=True))
    assert max(float(np.abs(a - b).max()) for a, b in zip(fast, exact, strict=True)) <= 1e-4


def _jpeg(array, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "rocket.jpg"])
def test_fast_jpeg_decoding_gives_pillows_pixels(name, monkeypatch):
    pytest.importorskip("simplejpeg")
    rgb = images.load_image(photo(name))
    for data in (_jpeg(rgb, quality=90), _jpeg(rgb[:, :, 0]), _jpeg(rgb, quality=80, progressive=True, subsampling=0)):
        fast = images.load_image(data)
        monkeypatch.setattr(images, "simplejpeg", None)  # the Pillow path, as without the extra
        assert np.array_equal(fast, images.load_image(data))
        monkeypatch.undo()


def test_jpeg_fast_path_leaves_rotation_and_truncation_to_pillow():
    rgb = images.load_image(photo("grace_hopper.jpg"))
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    assert images.load_image(buffer.getvalue()).shape == rgb.shape
    data = _jpeg(rgb)
    with pytest.raises(images.ImageError, match="truncated"):
        images.load_image(data[: len(data) // 2])


def test_batched_postprocess_equals_one_image_at_a_time(person_detector):
    arrays = [images.load_image(photo(name)) for name in ("astronaut.png", "coffee.png", "grace_hopper.jpg")]
    codes, logits = person_detector.predict_raw(person_detector.preprocess(arrays))
    for clip in ("after_nms", "before_nms"):
        for threshold in (0.5, 0.01):
            batch = postprocess(codes, logits, person_detector.anchors, score_threshold=threshold, clip_boxes=clip)
            for i, got in enumerate(batch):
                (want,) = postprocess(
                    codes[i : i + 1],
                    logits[i : i + 1],
                    person_detector.anchors,
                    score_threshold=threshold,
                    clip_boxes=clip,
                )
                assert np.array_equal(got.boxes, want.boxes) and np.array_equal(got.scores, want.scores)
                assert np.array_equal(got.labels, want.labels)


def _png(array, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "chelsea.png", "motorcycle_left.png"])
def test_fast_png_decoding_gives_pillows_pixels(name, monkeypatch):
    pytest.importorskip("cv2")
    data = photo(name).read_bytes()
    rgb = images.load_image(data)
    for encoded in (data, _png(rgb[:, :, 0]), _png(rgb, compress_level=1)):
        fast = images.load_image(encoded)
        monkeypatch.setattr(images, "cv2", None)  # the Pillow path, as without the extra
        assert np.array_equal(fast, images.load_image(encoded))
        monkeypatch.undo()


def test_png_fast_path_leaves_alpha_palette_and_truncation_to_pillow():
    rgb = images.load_image(photo("chelsea.png"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    composited = images.load_image(_png(rgba))  # RGBA: composited on white, as everywhere
    assert composited.shape == rgb.shape and not np.array_equal(composited, rgb)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    assert images.load_image(palette).shape == rgb.shape
    data = _png(rgb)
    with pytest.raises(images.ImageError, match=r"truncated|corrupt"):
        images.load_image(data[: len(data) // 2])
