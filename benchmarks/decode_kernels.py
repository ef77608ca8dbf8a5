"""The decoder's GroupNorm -> SiLU -> replicate pad, and its upsampling -> replicate pad, alone, at the shapes of a
section's decode (640x608, a temporal tile of 5 latent frames): torch's kernels as engine/fast_decode.py uses them
against engine/decode_kernels.py's Triton kernels at a few block sizes, with the largest difference between the two.

    python -m benchmarks.decode_kernels --out results.jsonl [--configs 2x512,1x1024]

A config is the rows and source columns of a padding program (engine/decode_kernels.py picks them from the width).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.attention_kernels import cuda_ms
from engine import decode_kernels
from engine.fast_decode import _silu_into, group_norm, replicate_pad, upsample_nearest

# (channels, frames, height, width) of the decoder's norms on one temporal tile at 640x608, and of its upsamplers'
# inputs with their factors
NORM_SHAPES = [(512, 5, 76, 80), (512, 5, 152, 160), (256, 9, 304, 320), (256, 17, 608, 640), (128, 17, 608, 640)]
UPSAMPLINGS = [((512, 5, 76, 80), (1, 2, 2)), ((512, 5, 152, 160), (2, 2, 2)), ((256, 9, 304, 320), (2, 2, 2))]
PAD = (1, 1, 1, 1, 2, 0)  # the causal 3x3x3 convolution's


def seconds(work) -> float:
    """Mean seconds of 5 calls after one untimed, by CUDA events."""
    times = cuda_ms(work, warmup=1, repeats=5)
    return sum(times) / len(times) / 1000


def measure(shape: tuple[int, int, int, int], configs: list[str], factors=None) -> dict:
    """The norm-SiLU-pad of a tensor of `shape`, or with `factors` its upsampling and padding, both ways."""
    x = torch.randn(1, *shape, device="cuda", dtype=torch.float16)
    norm = torch.nn.GroupNorm(32, shape[0], eps=1e-6).to("cuda", torch.float16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    if factors is None:
        def in_torch():
            return replicate_pad(group_norm(x, norm), PAD, fill=_silu_into)

        def in_triton():
            return decode_kernels.norm_silu_pad(x, norm, PAD)
    else:
        def in_torch():
            return replicate_pad(upsample_nearest(x, factors), PAD)

        def in_triton():
            return decode_kernels.upsample_pad(x, factors, PAD)

    reference = in_torch()
    row = {"bench": "decode_kernels", "work": "norm-silu-pad" if factors is None else f"upsample {factors}-pad",
           "shape": list(shape), "torch_s": round(seconds(in_torch), 5)}
    if factors is None:
        row["triton_stats_s"] = round(seconds(lambda: decode_kernels.group_moments(x, 32, 1e-6)), 5)
    if configs:  # rows x columns of a padding program, in place of engine/decode_kernels.py's choice
        blocks = decode_kernels._pad_blocks
        for config in configs:
            rows, columns = (int(v) for v in config.split("x"))
            decode_kernels._pad_blocks = lambda width, rows=rows, columns=columns: (rows, columns)
            row[f"triton_{config}_s"] = round(seconds(in_triton), 5)
        decode_kernels._pad_blocks = blocks
    row["triton_s"] = round(seconds(in_triton), 5)
    row["max_diff"] = (in_triton().float() - reference.float()).abs().max().item()
    return row | {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="", help="also time these ROWSxCOLUMNS blocks, e.g. 2x512,1x1024")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    for shape, factors in [*((shape, None) for shape in NORM_SHAPES), *UPSAMPLINGS]:
        with torch.inference_mode():
            row = measure(shape, [c for c in args.configs.split(",") if c], factors)
        with args.out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
