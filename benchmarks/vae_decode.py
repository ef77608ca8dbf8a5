"""One section's VAE decode on the GPU (full-size random fp16 VAE): untiled and tiled at several tile sizes,
eager and compiled, with the time, the peak memory above the weights, and the PSNR against today's decodes.

    python -m benchmarks.vae_decode --out results.jsonl [--tiles 256,320,384,512] [--compiled 256,384]

The window is the 18 latent frames the demos decode after a section, at 640x608 (76x80 latents). "untiled" is
diffusers' default decode (frame-wise, in temporal tiles of 16 frames); a tile size T decodes spatial tiles of
T px every T - 64 px, diffusers' default overlap (256 every 192 is its default tiling).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo

from engine.speed import compile_vae_decoder
from engine.stitch import vae_decode

OVERLAP = 64  # px: diffusers' default tiles overlap by 256 - 192


def set_tiles(vae, tile: int | None) -> None:
    if tile is None:
        vae.disable_tiling()
    else:
        vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                          tile_sample_stride_height=tile - OVERLAP, tile_sample_stride_width=tile - OVERLAP)


def timed(vae, latents, tile: int | None, repeats: int) -> tuple[torch.Tensor, list[float], float]:
    set_tiles(vae, tile)
    vae_decode(latents, vae)  # the first call pays for cuDNN's (or Inductor's) choices
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pixels = vae_decode(latents, vae)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return pixels, times, (torch.cuda.max_memory_allocated() - base) / 2**30


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pixels in [-1, 1]: a peak-to-peak of 2."""
    mse = torch.mean((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", default="256,320,384,512")
    parser.add_argument("--compiled", default="256,384", help="tile sizes (or 0: untiled) also timed compiled")
    parser.add_argument("--frames", type=int, default=18)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--latent-size", default="76x80", help="latent height x width (640x608 px: 76x80)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo().to("cuda", torch.float16).eval().requires_grad_(False)
    height, width = (int(n) for n in args.latent_size.split("x"))
    latents = torch.randn(1, 16, args.frames, height, width, generator=torch.Generator().manual_seed(1))
    latents = latents * vae.config.scaling_factor
    reference: dict[str, torch.Tensor] = {}

    def record(kind: str, tile: int | None) -> None:
        pixels, times, peak = timed(vae, latents, tile, args.repeats)
        name = "untiled" if tile is None else f"tiles {tile}/{tile - OVERLAP}"
        reference.setdefault(f"{kind} {name}", pixels)
        row = {"bench": "vae_decode", "kind": kind, "decode": name, "latent_frames": args.frames,
               "seconds": [round(t, 3) for t in times], "best_s": round(min(times), 3),
               "peak_above_weights_gib": round(peak, 2),
               "psnr_vs_eager_untiled_db": round(psnr(pixels, reference["eager untiled"]), 2),
               "psnr_vs_eager_default_tiles_db": round(psnr(pixels, reference["eager tiles 256/192"]), 2)
               if "eager tiles 256/192" in reference else None,
               "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
        with args.out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    with torch.inference_mode():
        record("eager", None)
        for tile in (int(t) for t in args.tiles.split(",") if t):
            record("eager", tile)
        compile_vae_decoder(vae)
        for tile in (int(t) for t in args.compiled.split(",") if t):
            record("compiled", tile or None)


if __name__ == "__main__":
    main()
