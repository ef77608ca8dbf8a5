"""Checks on what a person sends, shared by the chat frontends and the engine (no torch here)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError


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
