"""The official helpers' answers on inputs the demo cases do not reach (see ../README.md).

Runs in the official venv with the stubs on PYTHONPATH:
    PYTHONPATH=tests/golden/make/stubs:tests:<checkout> venv/bin/python tests/golden/make/official_tables.py OUT_DIR

- bucket choice and resize/crop (diffusers_helper.bucket_tools, utils.resize_and_center_crop) for picture
  sizes from tiny to 20:1, with pictures made from a formula (no RNG, so both sides build the same pixels);
- the flow shift mu and the sigma schedule (pipelines.k_diffusion_hunyuan) for several token counts and
  step counts;
- the demos' soft_append chain over decoded sections, for both samplers, and the uint8 frames that
  save_bcthw_as_mp4 would encode, from section chunks stored in the output (the raw input of both sides).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision.io  # the stub: records what save_bcthw_as_mp4 encodes
from diffusers_helper.bucket_tools import find_nearest_bucket
from diffusers_helper.pipelines.k_diffusion_hunyuan import calculate_flux_mu, get_flux_sigmas_from_mu
from diffusers_helper.utils import resize_and_center_crop, save_bcthw_as_mp4, soft_append_bcthw
from golden_files import digest
from safetensors.torch import save_file

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
sizes = json.loads((Path(__file__).parents[1] / "tables_inputs.json").read_text())


def formula_picture(height: int, width: int) -> np.ndarray:
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((x * 7 + y * 13 + c * 29 + (x * y) % 17) % 256).astype(np.uint8)


crops, tensors = [], {}
for height, width in sizes["pictures"]:
    bucket_h, bucket_w = find_nearest_bucket(height, width, resolution=640)
    cropped = resize_and_center_crop(formula_picture(height, width), target_width=bucket_w, target_height=bucket_h)
    crops.append({"size": [height, width], "bucket": [bucket_h, bucket_w],
                  "crop": digest(torch.from_numpy(np.ascontiguousarray(cropped)))})

schedules = []
for tokens, steps in sizes["schedules"]:
    mu = calculate_flux_mu(tokens, exp_max=7.0)
    sigmas = get_flux_sigmas_from_mu(steps, mu)
    schedules.append({"tokens": tokens, "steps": steps, "mu": mu})
    tensors[f"sigmas_{tokens}_{steps}"] = sigmas

chains = []
for variant, sections, window in sizes["stitch"]:
    overlap = window * 4 - 3
    generator = torch.Generator("cpu").manual_seed(sections * 100 + window)
    history = None
    for index in range(sections):
        last = index == sections - 1
        if variant == "original":
            latents = (window if index == 0 else 2 * window) + (1 if last else 0)
        else:
            latents = window + 1 if index == 0 else 2 * window
        chunk = (torch.rand((1, 3, 4 * latents - 3, 4, 6), generator=generator) * 2.4 - 1.2).half()
        tensors[f"chunk_{variant}_{sections}_{window}_{index}"] = chunk[0]
        if history is None:
            history = chunk
        elif variant == "original":
            history = soft_append_bcthw(chunk, history, overlap)
        else:
            history = soft_append_bcthw(history, chunk, overlap)
    torchvision.io.written.clear()
    save_bcthw_as_mp4(history, str(out / "unused.mp4"), fps=30, crf=16)
    name = f"{variant}_{sections}_{window}"
    tensors[f"pixels_{name}"] = history[0]
    tensors[f"frames_{name}"] = torchvision.io.written[0][1]
    chains.append({"variant": variant, "sections": sections, "window": window})

save_file({k: v.contiguous().clone() for k, v in tensors.items()}, out / "official_tables.safetensors")
(out / "official_tables.json").write_text(json.dumps({"crops": crops, "schedules": schedules, "stitch": chains},
                                                     indent=1) + "\n")
print(len(crops), "crops,", len(schedules), "schedules,", len(chains), "stitch chains")
