"""How many operations a section's decode launches, counted on the CPU (no GPU needed): each is a kernel launch
on a GPU, and in 256 px tiles the launches, not the arithmetic, are what a decode waits on longest
(notes/issue21_speed.md).

    python -m benchmarks.decode_launches --out results.jsonl

- "decoder call": one call of the full-size decoder (diffusers' HunyuanVideo VAE, random weights) on a tiny
  latent, with engine/fast_decode.py's rewrite, its norms in engine/decode_kernels.py's Triton kernels (run by
  Triton's interpreter) and without them (torch's ops); torch operations and Triton launches apart.
- "section": a section's window (18 latent frames at 640x608) decoded in 256 px tiles, on the meta device (shapes
  only, nothing computed), through torch's ops: diffusers' tiles and blends against engine/spatial_tiles.py's.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels on the CPU; read when Triton is first imported

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes  # noqa: E402

# what only makes a view or an empty buffer: no kernel
NOT_LAUNCHED = {"detach", "alias", "view", "_unsafe_view", "expand", "slice", "select", "t", "transpose", "permute",
                "unsqueeze", "squeeze", "as_strided", "split", "split_with_sizes", "unbind", "empty",
                "empty_strided", "new_empty", "reshape", "_reshape_alias", "lift_fresh", "narrow"}
KERNELS = ("_plane_partials", "_merge_group", "_pad_rows", "_add_bias_residual")


class CountedOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NOT_LAUNCHED:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class CountedKernel:
    """A Triton kernel whose launches are counted, and run outside the count (the interpreter's own torch
    calls are not the GPU's)."""

    def __init__(self, kernel, name: str, launches: collections.Counter):
        self.kernel, self.name, self.launches = kernel, name, launches

    def __getitem__(self, grid):
        self.launches[self.name] += 1
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            with _disable_current_modes():
                return launch(*args, **kwargs)

        return run


def decoder_call(vae, kernels: bool) -> dict:
    import engine.fast_decode as fast_decode
    from engine import decode_kernels

    fast = copy.deepcopy(vae)
    fast_decode.speed_up_decoder(fast, kernels=kernels)
    launches: collections.Counter = collections.Counter()
    originals = {name: getattr(decode_kernels, name) for name in KERNELS if hasattr(decode_kernels, name)}
    chosen = fast_decode.kernels_for
    try:
        for name, kernel in originals.items():
            setattr(decode_kernels, name, CountedKernel(kernel, name, launches))
        # the kernels on CPU tensors: a GPU's choice where they work there
        fast_decode.kernels_for = lambda module, x: decode_kernels if module._framepack_kernels else None
        z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), CountedOps() as counted:
            fast.decoder(fast.post_quant_conv(z))
    finally:
        fast_decode.kernels_for = chosen
        for name, kernel in originals.items():
            setattr(decode_kernels, name, kernel)
    return {"measure": "decoder call", "kernels": "triton" if kernels else "torch",
            "torch_ops": sum(counted.ops.values()), "triton_launches": sum(launches.values()),
            "launches": sum(counted.ops.values()) + sum(launches.values()),
            "by_op": dict(counted.ops.most_common()), "by_kernel": dict(launches)}


def section(vae, ours: bool, frames: int, latent_size: tuple[int, int]) -> dict:
    from engine.fast_decode import speed_up_decoder
    from engine.spatial_tiles import decode_in_spatial_tiles

    tiled = copy.deepcopy(vae).to("meta")
    tiled.enable_tiling(tile_sample_min_height=256, tile_sample_min_width=256, tile_sample_stride_height=192,
                        tile_sample_stride_width=192)
    speed_up_decoder(tiled, kernels=False)
    if ours:
        decode_in_spatial_tiles(tiled)
    calls = []
    forward = tiled.decoder.forward
    tiled.decoder.forward = lambda latents: calls.append(1) or forward(latents)
    z = torch.empty(1, 16, frames, *latent_size, device="meta")
    with torch.no_grad(), CountedOps() as counted:
        tiled.decode(z)
    return {"measure": "section", "tiles": "engine/spatial_tiles.py" if ours else "diffusers",
            "latent_frames": frames, "latent_size": list(latent_size), "decoder_calls": len(calls),
            "launches": sum(counted.ops.values()), "by_op": dict(counted.ops.most_common(8))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=18)
    parser.add_argument("--latent-size", default="76x80", help="latent height x width (640x608 px: 76x80)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo().eval().requires_grad_(False)
    size = tuple(int(n) for n in args.latent_size.split("x"))
    rows = [decoder_call(vae, kernels=True), decoder_call(vae, kernels=False),
            section(vae, ours=False, frames=args.frames, latent_size=size),
            section(vae, ours=True, frames=args.frames, latent_size=size)]
    with args.out.open("a") as sink:
        for row in rows:
            row = {"bench": "decode_launches", **row, "torch": torch.__version__}
            sink.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
