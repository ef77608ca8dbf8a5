"""Checking, bucketing and cropping the input picture (SPEC.md section 2)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from storage.inputs import InputError

# A picture scaled to cover its bucket may be at most this many times the bucket's pixels (a 20:1 one needs
# about 9, some 20 MB of pixels): a 1x20000 one would otherwise need gigabytes. load_image refuses beyond
# 8:1 already; this holds when the engine is called directly.
MAX_COVER_FACTOR = 16

BUCKETS_640 = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)  # (height, width)


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
    scale = max(target_width / width, target_height / height)
    resized_w, resized_h = round(width * scale), round(height * scale)
    if resized_w * resized_h > MAX_COVER_FACTOR * target_width * target_height:
        raise InputError(f"The image is {width}x{height}, too long and thin to fit a "
                         f"{target_width}x{target_height} video frame.")
    pil = Image.fromarray(image)
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
