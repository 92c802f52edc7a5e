import numpy as np
import pytest
from PIL import Image

from detector.errors import ImageError
from detector.images import load_image
from tests.support import encode


def test_exif_orientation_is_applied():
    # A 40×20 landscape image with a red left half, tagged "rotate 90° CW to display" (orientation 6).
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6
    upright = load_image(encode(image, "PNG", exif=exif))
    assert upright.shape == (40, 20, 3)  # displayed as portrait
    assert upright[5, 10, 0] > 200 and upright[35, 10, 0] < 50  # red is now on top


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "LA"])
def test_modes_convert_to_rgb(mode):
    image = Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else "PNG"
    array = load_image(encode(image, fmt))
    assert array.shape == (6, 8, 3) and array.dtype == np.uint8


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert (load_image(encode(rgba, "PNG")) == 255).all()
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert (load_image(encode(palette, "PNG", transparency=0)) == 255).all()


def test_sixteen_bit_keeps_range():
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(array)
    assert image.mode.startswith("I;16")
    assert load_image(encode(image, "PNG"))[0, :, 0].tolist() == [0, 128, 255]


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (5, 5), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = load_image(data)
    assert first[0, 0, 0] > 200 and first[0, 0, 2] < 50


def test_numpy_inputs():
    assert load_image(np.zeros((3, 4), np.uint8)).shape == (3, 4, 3)
    assert load_image(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
    assert load_image(np.full((2, 2, 3), 0.5, np.float32)).max() == 128
    with pytest.raises(ImageError, match="must be"):
        load_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageError, match="dtype"):
        load_image(np.zeros((2, 2, 3), np.int64))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not an image"),
        (encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60], "corrupt or truncated|cannot read"),
        (encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200], "corrupt or truncated|cannot read"),
    ],
)
def test_bad_bytes_raise_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="cannot read an image from a int"):
        load_image(3)
