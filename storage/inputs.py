"""Checks on what a person sends, shared by the chat frontends and the engine (no torch here)."""

from __future__ import annotations

import io
import unicodedata
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# Only these decoders ever see a person's file: nothing else is tried, so no exotic plugin parses it
# and EPS never reaches Ghostscript.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
MAX_ASPECT_RATIO = 8  # wider or taller than 8:1 cannot be cropped to a video frame without a huge resize
MIN_SIDE = 16  # pixels
# Our pixel limit, read from the header before decoding, is the one that counts. Pillow's own guard
# (process-wide: a warning over 89.5 megapixels, an error over twice that) would refuse pictures an admin
# allowed, so its error is moved up to the highest limit an admin can set (storage/limits.py; a test keeps
# them in step), where it stays as a backstop, and load_image ignores its warning.
HIGHEST_PIXEL_LIMIT = 200_000_000
if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < HIGHEST_PIXEL_LIMIT:
    Image.MAX_IMAGE_PIXELS = HIGHEST_PIXEL_LIMIT // 2

ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
_ALLOWED_CONTROLS = "\n\t"


class InputError(ValueError):
    """Bad input from a person; the message is written for them."""


def quoted(raw: str, limit: int = 40) -> str:
    """What a person typed, quoted for an answer that says what was wrong with it: clipped, since the chats
    refuse a message over their length limit (Discord 2000 characters, Telegram 4096) and repr spells out
    each invisible character in up to ten."""
    return repr(raw if len(raw) <= limit else raw[:limit] + "…")


def check_prompt(prompt: str, max_chars: int) -> str:
    """The prompt without surrounding whitespace, or an InputError that says what is wrong with it."""
    if len(prompt) > max_chars:
        raise InputError(f"The prompt is {len(prompt)} characters long; it must not be longer than {max_chars} "
                         "characters.")
    if not "".join(c for c in prompt if c not in ZERO_WIDTH).strip():
        raise InputError("The prompt is empty.")
    if has_control_characters(prompt):
        raise InputError("The prompt contains invisible control characters; please type it again without them.")
    return prompt.strip()


def has_control_characters(text: str) -> bool:
    """Control characters besides newlines and tabs: never typed, and the tokenizer's to guess at."""
    return any(unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROLS for c in text)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """From the header, before any pixel is decoded: refuse bombs and shapes no video frame can hold."""
    if width * height > max_pixels:
        raise InputError(
            f"The image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
            f"the limit is {max_pixels / 1e6:.1f} megapixels."
        )
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio > MAX_ASPECT_RATIO:
        raise InputError(f"The image is {width}x{height}, an aspect ratio of {round(ratio, 1):g}:1; "
                         f"the limit is {MAX_ASPECT_RATIO}:1.")
    if min(width, height) < MIN_SIDE:
        raise InputError(f"The image is {width}x{height}; each side must be at least {MIN_SIDE} pixels.")


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
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours is the limit
            image = Image.open(opener, formats=list(FORMATS))
            _check_size(*image.size, max_pixels)
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos are stored sideways with a rotation tag
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(
            f"The image has far too many pixels; the limit is {max_pixels / 1e6:.1f} megapixels."
        ) from None
    except UnidentifiedImageError:
        raise InputError("That file is not an image I can read (PNG, JPEG, WebP, GIF, BMP or TIFF).") from None
    except (OSError, SyntaxError, ValueError):
        raise InputError("The image is damaged or truncated and could not be decoded.") from None
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")
