"""Input checks and bucket cropping (SPEC.md section 2)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.image_input import BUCKETS_640, nearest_bucket, prepare_image
from engine.render import RenderRequest
from storage.inputs import InputError, load_image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A valid small PNG whose header says width x height: a decompression bomb's calling card."""
    data = bytearray(_png_bytes(Image.new("RGB", (8, 8))))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    body = bytearray(data[ihdr + 8: ihdr + 8 + 13])
    body[0:8] = struct.pack(">II", width, height)
    data[ihdr + 8: ihdr + 8 + 13] = body
    data[ihdr + 21: ihdr + 25] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    return bytes(data)


def test_real_image_loads_as_rgb(picture):
    loaded = load_image(_png_bytes(picture), max_pixels=10**6)
    assert loaded.mode == "RGB" and loaded.size == picture.size


def test_not_an_image_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text pretending to be a picture")
    with pytest.raises(InputError, match="not an image"):
        load_image(path, max_pixels=10**6)


def test_empty_and_missing_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="empty"):
        load_image(b"", max_pixels=10**6)
    with pytest.raises(InputError, match="No such image"):
        load_image(tmp_path / "absent.png", max_pixels=10**6)


def test_truncated_file_is_refused(picture):
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    with pytest.raises(InputError, match="damaged or truncated"):
        load_image(data[: len(data) // 2], max_pixels=10**6)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_claiming_size(20000, 20000)
    with pytest.raises(InputError, match="too many pixels; the limit is 40.0 megapixels"):
        load_image(bomb, max_pixels=40_000_000)
    large = _png_claiming_size(8000, 6000)
    with pytest.raises(InputError, match="8000x6000"):
        load_image(large, max_pixels=40_000_000)


def test_too_many_bytes_is_refused(picture):
    data = _png_bytes(picture)
    with pytest.raises(InputError, match="MB"):
        load_image(data, max_pixels=10**6, max_bytes=len(data) - 1)


def test_transparent_image_is_flattened_on_white():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    loaded = load_image(_png_bytes(rgba), max_pixels=10**6)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue(), max_pixels=10**6).size == (20, 40)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_damaged_exif_block_is_a_damaged_picture_not_a_crash(fmt):
    # Pillow reads these formats' EXIF only when the rotation is applied, and raises SyntaxError on garbage
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (10, 20, 30)).save(buffer, format=fmt, exif=b"garbage!")
    with pytest.raises(InputError, match="damaged or truncated"):
        load_image(buffer.getvalue(), max_pixels=10**6)


def test_bucket_choice_follows_spec():
    assert nearest_bucket(1000, 1000) == (640, 608)  # square: the last tie wins
    assert nearest_bucket(1080, 1920) == (480, 832)
    assert nearest_bucket(1920, 1080) == (832, 480)
    assert nearest_bucket(400, 1000) == (416, 960)
    assert nearest_bucket(512, 768) == (512, 768)
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in BUCKETS_640)


def test_prepare_image_crops_to_the_bucket():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8))
    cropped = prepare_image(image)
    assert cropped.shape == (480, 832, 3) and cropped.dtype == np.uint8
    exact = Image.fromarray(cropped)
    assert np.array_equal(prepare_image(exact), cropped)  # already exact: untouched


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "x" * 1001}, "prompt is 1001 characters"),
        ({"seconds": 0.5}, "between 1 and 120"),
        ({"seconds": 121}, "between 1 and 120"),
        ({"variant": "f2"}, "Unknown variant"),
        ({"steps": 0}, "Steps"),
        ({"steps": 101}, "Steps"),
        ({"crf": 60}, "CRF"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(changes, message):
    with pytest.raises(InputError, match=message):
        RenderRequest(**{"prompt": "a cat", **changes}).checked(max_prompt_chars=1000)


def test_lower_duration_limit_from_settings():
    with pytest.raises(InputError, match="between 1 and 30"):
        RenderRequest(prompt="a cat", seconds=31).checked(max_seconds=30)
    assert RenderRequest(prompt="a cat", seconds=30, variant="F1").checked(max_seconds=30).variant.value == "f1"


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1)])
def test_a_thin_picture_is_refused_before_it_is_stored_or_resized(size):
    data = _png_bytes(Image.new("L", size))  # 57 KB that once made the resize allocate 7.4 GB
    with pytest.raises(InputError, match="20000:1; the limit is 8:1"):
        load_image(data, max_pixels=10**9)
    with pytest.raises(InputError, match="too long and thin"):
        prepare_image(Image.new("RGB", size))


def test_a_tiny_picture_is_refused():
    with pytest.raises(InputError, match="at least 16 pixels"):
        load_image(_png_bytes(Image.new("RGB", (10, 12))), max_pixels=10**6)


def test_the_widest_allowed_picture_still_fits_a_bucket():
    from conftest import make_picture

    image = load_image(_png_bytes(make_picture(800, 100)), max_pixels=10**6)  # 8:1, the limit
    assert prepare_image(image).shape == (416, 960, 3)
    assert prepare_image(make_picture(1920, 1080)).shape == (480, 832, 3)  # a 16:9 photo


def test_our_pixel_limit_overrules_pillows_bomb_guard():
    data = _png_bytes(Image.new("1", (12000, 10000)))  # 120 megapixels: over Pillow's 89.5 MP warning
    assert load_image(data, max_pixels=150_000_000).size == (12000, 10000)
    with pytest.raises(InputError, match="12000x10000"):
        load_image(data, max_pixels=100_000_000)


def test_pillows_guard_stays_above_every_limit_an_admin_can_set():
    from storage.inputs import HIGHEST_PIXEL_LIMIT
    from storage.limits import BOUNDS

    assert BOUNDS["max_image_pixels"][1] == HIGHEST_PIXEL_LIMIT
    assert 2 * Image.MAX_IMAGE_PIXELS == HIGHEST_PIXEL_LIMIT  # Pillow's error: only over the highest limit


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_the_six_formats_are_accepted(fmt):
    from conftest import make_picture

    assert load_image(_encoded(make_picture(40, 30), fmt), max_pixels=10**6).size == (40, 30)


def test_other_formats_are_refused_before_decoding():
    from conftest import make_picture

    ico = _encoded(make_picture(32, 32), "ICO")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # never handed to Ghostscript
    for data in (ico, eps):
        with pytest.raises(InputError, match="not an image I can read"):
            load_image(data, max_pixels=10**6)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "The prompt is empty."),
        (" \u200b\u200c\u200d\u2060\ufeff \n\t", "The prompt is empty."),
        ("a cat\x00 dances", "control characters"),
        ("a cat\x1b[31m dances", "control characters"),
        ("x" * 1001, "longer than 1000 characters"),
    ],
)
def test_bad_prompts_are_refused(prompt, message):
    from storage.inputs import check_prompt

    with pytest.raises(InputError, match=message):
        check_prompt(prompt, max_chars=1000)


def test_a_good_prompt_is_kept():
    from storage.inputs import check_prompt

    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # zero-width joiners inside a prompt are kept
    assert check_prompt(f"  a cat\tturns\nits head {family} ", max_chars=1000) == f"a cat\tturns\nits head {family}"
