"""The request path around the network: fast decoding, preprocessing and a batched postprocess, all exact."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector import images
from detector.postprocess import postprocess
from detector.preprocess import preprocess, resize_bilinear_legacy
from detector.samples import photo


def _reference_preprocess(arrays, size=300, scale=2.0 / 255.0, offset=-1.0):
    batch = torch.empty((len(arrays), 3, size, size))
    for i, array in enumerate(arrays):
        resized = resize_bilinear_legacy(torch.from_numpy(array).to(torch.float32), (size, size))
        batch[i] = (resized * torch.tensor(scale, dtype=torch.float32) + offset).permute(2, 0, 1)
    return batch


def test_fast_preprocess_is_bit_equal_to_the_tf_resize():
    rng = np.random.default_rng(0)
    shapes = [(480, 640), (100, 150), (300, 300), (1, 1), (299, 301), (1000, 30), (300, 600)]
    arrays = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]
    arrays.append(np.asfortranarray(arrays[0]))  # a non-contiguous layout too
    assert torch.equal(preprocess(arrays), _reference_preprocess(arrays))


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
                assert torch.equal(got.boxes, want.boxes) and torch.equal(got.scores, want.scores)
                assert torch.equal(got.labels, want.labels)
