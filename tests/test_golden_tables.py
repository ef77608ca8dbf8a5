"""The project's bucket choice, crop, sigma schedule, section blending and frame quantization against the
official helpers' answers (tests/golden/results/official_tables.*, made by golden/make/official_tables.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from golden_files import GOLDEN_DIR, mismatch
from safetensors.torch import load_file

from engine.image_input import nearest_bucket, resize_and_center_crop
from engine.sections import Variant, overlap_frames
from engine.stitch import OverlapStitcher
from engine.unipc import flux_mu, flux_sigmas
from engine.video import frames_to_uint8

TABLES = json.loads((GOLDEN_DIR / "results" / "official_tables.json").read_text())
TENSORS = load_file(GOLDEN_DIR / "results" / "official_tables.safetensors")


def formula_picture(height: int, width: int) -> np.ndarray:
    """The same pixels official_tables.py built: a formula, no RNG."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((x * 7 + y * 13 + c * 29 + (x * y) % 17) % 256).astype(np.uint8)


@pytest.mark.parametrize("row", TABLES["crops"], ids=[f"{r['size'][0]}x{r['size'][1]}" for r in TABLES["crops"]])
def test_bucket_and_crop(row):
    height, width = row["size"]
    bucket = nearest_bucket(height, width)
    assert list(bucket) == row["bucket"]
    cropped = resize_and_center_crop(formula_picture(height, width), bucket[1], bucket[0])
    assert mismatch(torch.from_numpy(np.ascontiguousarray(cropped)), row["crop"]) is None


@pytest.mark.parametrize("row", TABLES["schedules"], ids=[f"{r['tokens']}x{r['steps']}" for r in TABLES["schedules"]])
def test_shift_and_sigmas(row):
    mu = flux_mu(row["tokens"])
    assert mu == row["mu"]
    assert torch.equal(flux_sigmas(row["steps"], mu), TENSORS[f"sigmas_{row['tokens']}_{row['steps']}"])


@pytest.mark.parametrize("row", TABLES["stitch"], ids=[f"{r['variant']}_{r['sections']}x{r['window']}"
                                                       for r in TABLES["stitch"]])
def test_streamed_blend_equals_the_demos_soft_append_chain(row):
    variant, sections, window = Variant(row["variant"]), row["sections"], row["window"]
    name = f"{row['variant']}_{sections}_{window}"
    stitcher = OverlapStitcher(overlap_frames(window), variant is Variant.ORIGINAL, sections)
    blocks = [stitcher.add(TENSORS[f"chunk_{name}_{index}"]) for index in range(sections)]
    blocks.append(stitcher.finish())
    video = torch.cat([block for _, block in sorted(blocks, key=lambda b: b[0])], dim=1)
    assert torch.equal(video, TENSORS[f"pixels_{name}"])
    assert np.array_equal(frames_to_uint8(video), TENSORS[f"frames_{name}"].numpy())
