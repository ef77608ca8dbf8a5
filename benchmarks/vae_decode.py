"""One section's VAE decode on the GPU (full-size random fp16 VAE): untiled and tiled at several tile sizes,
eager and compiled, with the time, the peak memory above the weights, and the PSNR against today's decodes.

    python -m benchmarks.vae_decode --out results.jsonl [--tiles 256,320,384,512] [--compiled 256,384]
        [--ways fast,fast-torch,fast-reuse|static] [--edge-tiles skip,keep] [--tile-batches 2,3]
        [--profile FILE [--profile-tile T]]

The window is the 18 latent frames the demos decode after a section, at 640x608 (76x80 latents). "untiled" is
diffusers' default decode (frame-wise, in temporal tiles of 16 frames); a tile size T decodes spatial tiles of
T px every T - 64 px, diffusers' default overlap (256 every 192 is its default tiling). `--ways fast` times the
decoder of engine/fast_decode.py untiled and at --tiles, with its norms in engine/decode_kernels.py's Triton
kernels ("fast-torch": in torch's kernels), in tiles without the edge strips another tile covers as jobs decode
(`--edge-tiles skip`, engine/spatial_tiles.py) and/or in diffusers' tiles (`keep`: the same pixels as eager
up to rounding); "fast-reuse"
the fast decoder right after the previous section's window (9 frames on), reusing
the tiles the two share (engine/decoded_tiles.py); "static" the decoder compiled for fixed shapes (the
first call, the compile, timed apart); `--profile` writes the eager untiled decode's top kernels by GPU
time, and each fast way's. (The batched-tiles and copy-padding rows of 2026-12-03, and the channels-last
and Inductor-fused rows of 2026-12-04, came from earlier versions of this script.)
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo

from engine.decoded_tiles import reuse_decoded_tiles
from engine.fast_decode import speed_up_decoder
from engine.spatial_tiles import decode_in_spatial_tiles
from engine.speed import compile_vae_decoder
from engine.stitch import vae_decode

OVERLAP = 64  # px: diffusers' default tiles overlap by 256 - 192


def set_tiles(vae, tile: int | None) -> None:
    if tile is None:
        vae.disable_tiling()
    else:
        vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                          tile_sample_stride_height=tile - OVERLAP, tile_sample_stride_width=tile - OVERLAP)


def timed(vae, latents, tile: int | None, repeats: int, decode=vae_decode,
          before=None) -> tuple[torch.Tensor, list[float], float]:
    """`before` (untimed) decodes the previous section's window ahead of each timed decode."""
    set_tiles(vae, tile)
    before = before or (lambda: None)
    before()
    start = time.perf_counter()
    decode(latents, vae)  # the first call pays for cuDNN's (or Inductor's) choices
    torch.cuda.synchronize()
    first_call = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        before()
        torch.cuda.synchronize()
        start = time.perf_counter()
        pixels = decode(latents, vae)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return pixels, [first_call, *times], (torch.cuda.max_memory_allocated() - base) / 2**30


def profile(vae, latents, path: Path, tile: int | None = None) -> None:
    """A decode's top kernels by GPU time, and its wall time against its kernels' (a gap: the GPU waiting on
    launches), written to `path`."""
    set_tiles(vae, tile)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        vae_decode(latents, vae)
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = sum(event.self_device_time_total for event in events) / 1e6
    table = events.table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90)
    table += f"\nwall {wall:.3f} s (profiled), GPU kernels {kernels:.3f} s\n"
    path.write_text(table)
    print(table, flush=True)


def fast_vae(vae, way: str, batch: int, skip_covered: bool):
    """A copy of `vae` decoding the `way` way ("fast", "fast-torch", "fast-reuse"), `batch` tiles a call,
    skipping the edge tiles a tile covers or not."""
    fast = copy.deepcopy(vae)
    speed_up_decoder(fast, kernels="-torch" not in way)
    decode_in_spatial_tiles(fast, batch, skip_covered)
    if way.endswith("-reuse"):
        reuse_decoded_tiles(fast)
    return fast


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
    parser.add_argument("--ways", default="", help="fast, fast-torch and/or fast-reuse (engine/fast_decode.py with "
                        "and without its Triton kernels, and reusing the previous window's tiles: untiled, then "
                        "--tiles) or static")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write each way's untiled decode's top kernels (FILE, FILE.fast, FILE.fast-reuse)")
    parser.add_argument("--tile-batches", default="", help="also time each fast way's tiled decodes with up to "
                        "this many tiles of one shape a decoder call (engine/spatial_tiles.py), e.g. 2,3,6")
    parser.add_argument("--edge-tiles", default="skip", help="skip and/or keep: the fast ways' tiled decodes "
                        "without the edge strips a tile covers (the jobs' way) or with them (diffusers' tiles)")
    parser.add_argument("--profile-tile", type=int, default=None, help="profile the fast ways in tiles of this size")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo().to("cuda", torch.float16).eval().requires_grad_(False)
    height, width = (int(n) for n in args.latent_size.split("x"))
    # the window, and 9 frames on the previous section's (the inverted sampler's order)
    history = torch.randn(1, 16, args.frames + 9, height, width, generator=torch.Generator().manual_seed(1))
    history = history * vae.config.scaling_factor
    latents, previous = history[:, :, :args.frames], history[:, :, 9:args.frames + 9]
    reference: dict[str, torch.Tensor] = {}

    def record(kind: str, tile: int | None, decode=vae_decode, on=vae, batch: int = 1, edges: str = "keep") -> None:
        before = (lambda: vae_decode(previous, on)) if kind.endswith("-reuse") else None
        pixels, (first_call, *times), peak = timed(on, latents, tile, args.repeats, decode, before)
        name = "untiled" if tile is None else f"tiles {tile}/{tile - OVERLAP}"
        reference.setdefault(f"{kind} {name}", pixels)
        row = {"bench": "vae_decode", "kind": kind, "decode": name, "tile_batch": batch, "edge_tiles": edges,
               "latent_frames": args.frames,
               "first_call_s": round(first_call, 2),
               "seconds": [round(t, 3) for t in times], "best_s": round(min(times), 3),
               "peak_above_weights_gib": round(peak, 2),
               "psnr_vs_eager_untiled_db": round(psnr(pixels, reference["eager untiled"]), 2),
               "psnr_vs_eager_same_tiles_db": round(psnr(pixels, reference[f"eager {name}"]), 2),
               "psnr_vs_eager_default_tiles_db": round(psnr(pixels, reference["eager tiles 256/192"]), 2)
               if "eager tiles 256/192" in reference else None,
               "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
        with args.out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    tiles = [int(t) for t in args.tiles.split(",") if t]
    ways = [way for way in args.ways.split(",") if way]
    with torch.inference_mode():
        record("eager", None)
        if args.profile is not None:
            profile(vae, latents, args.profile)
        for tile in tiles:
            record("eager", tile)
        fast_ways = [way for way in ways if way.startswith("fast")]
        batches = [1, *(int(b) for b in args.tile_batches.split(",") if b)]
        layouts = [(batch, edges) for edges in args.edge_tiles.split(",") for batch in batches]
        for way in fast_ways:  # each against the eager decode in diffusers' tiles of that size as well
            for batch, edges in layouts:  # untiled once, then in tiles: one a decoder call, then in batches
                fast = fast_vae(vae, way, batch, edges == "skip")
                untiled_too = (batch, edges) == layouts[0]
                for tile in [None, *tiles] if untiled_too else tiles:
                    record(way, tile, on=fast, batch=batch, edges=edges)
                if args.profile is not None:
                    name = f"{args.profile.name}.{way}" + (f".batch{batch}" if batch > 1 else "") + f".{edges}"
                    profile(fast, latents, args.profile.with_name(name), args.profile_tile)
                del fast
        if fast_ways:
            return
        if "static" in ways:
            vae.decoder.forward = torch.compile(vae.decoder.forward, dynamic=False)
            record("compiled static", None)
            return
        compile_vae_decoder(vae)
        for tile in (int(t) for t in args.compiled.split(",") if t):
            record("compiled", tile or None)

if __name__ == "__main__":
    main()
