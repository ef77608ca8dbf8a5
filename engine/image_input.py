"""Checking, bucketing and cropping the input picture (SPEC.md section 2)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

BUCKETS_640 = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)  # (height, width)


class InputError(ValueError):
    """Bad input from a person; the message is written for them."""


def load_image(source: str | Path | bytes, max_pixels: int, max_bytes: int | None = None) -> Image.Image:
    """Open a picture that a person sent, proving it decodes, within the limits; returns RGB."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"No such image file: {path}")
        size = path.stat().st_size
        opener = path
    else:
        size = len(source)
        opener = io.BytesIO(source)
    if size == 0:
        raise InputError("The image file is empty.")
    if max_bytes is not None and size > max_bytes:
        raise InputError(f"The image is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(opener)
            # The header gives the size before any pixel is decoded: refuse bombs here.
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(
                    f"The image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
                    f"the limit is {max_pixels / 1e6:.1f} megapixels."
                )
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"The image has far too many pixels; the limit is {max_pixels / 1e6:.1f} megapixels."
        ) from None
    except UnidentifiedImageError:
        raise InputError("That file is not an image I can read (PNG, JPEG, WebP, GIF, BMP or TIFF).") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"The image is damaged or truncated and could not be decoded ({error}).") from None
    image = ImageOps.exif_transpose(image)  # phone photos are stored sideways with a rotation tag
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def nearest_bucket(height: int, width: int, buckets=BUCKETS_640) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest; ties go to the later bucket, as in the demos."""
    best, best_metric = buckets[0], float("inf")
    for bucket_h, bucket_w in buckets:
        metric = abs(height * bucket_w - width * bucket_h)
        if metric <= best_metric:
            best, best_metric = (bucket_h, bucket_w), metric
    return best


def resize_and_center_crop(image: np.ndarray, target_width: int, target_height: int) -> np.ndarray:
    """Scale to cover the target with LANCZOS, then crop the middle."""
    height, width = image.shape[:2]
    if (width, height) == (target_width, target_height):
        return image
    pil = Image.fromarray(image)
    scale = max(target_width / width, target_height / height)
    resized_w, resized_h = round(width * scale), round(height * scale)
    resized = pil.resize((resized_w, resized_h), Image.LANCZOS)
    left, top = (resized_w - target_width) / 2, (resized_h - target_height) / 2
    cropped = resized.crop((left, top, left + target_width, top + target_height))
    return np.array(cropped)


def prepare_image(image: Image.Image, buckets=BUCKETS_640) -> np.ndarray:
    """RGB uint8 (H, W, 3) cropped to its bucket."""
    array = np.asarray(image.convert("RGB"))
    height, width = nearest_bucket(array.shape[0], array.shape[1], buckets)
    return resize_and_center_crop(array, width, height)


def scaled_buckets(resolution: int) -> tuple[tuple[int, int], ...]:
    """The 640 buckets scaled to another resolution, kept on the 16-pixel grid the transformer needs."""
    if resolution == 640:
        return BUCKETS_640

    def snap(v: int) -> int:
        return max(16, round(v * resolution / 640 / 16) * 16)

    return tuple(dict.fromkeys((snap(h), snap(w)) for h, w in BUCKETS_640))
