"""Seconds per denoising step of every transformer mode, in one process on one GPU, against the stock forward.

    python -m benchmarks.speed_modes --out results.jsonl [--only stock,fast,...]

Full-size random weights (benchmarks/full_size.py), the 640 bucket (640x608), window 9 and the full
1+2+16 clean context of an original-variant section: about 18,250 tokens per call. One step is one
transformer call (cfg 1). Each mode writes one JSON line: s/step (median of timed calls), peak GPU
memory, and its difference from the stock output on the same inputs. Stages run in an order that lets
each reuse the last one's weights; a stage that fails writes its error and the next one still runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from benchmarks.full_size import full_transformer
from engine import sections as sec
from engine.speed import block_attention_backend, compile_blocks, set_block_attention, uncompile_blocks

HEIGHT, WIDTH, WINDOW = 640, 608, 9
DEVICE = "cuda"
DIMS = {"text": 4096, "pooled": 768, "image": 1152}
COMPILE_BACKEND = "inductor"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_gb() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else 0.0


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def environment() -> dict:
    import diffusers

    return {
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke test)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def section_inputs(text_tokens: int = 24, seed: int = 0) -> dict:
    """One original-variant section call (padding 3: the first section of a 5 s video)."""
    g = torch.Generator(DEVICE).manual_seed(seed)
    h, w = HEIGHT // 8, WIDTH // 8
    layout = sec.inverted_layout(3, WINDOW)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=DEVICE).to(torch.bfloat16)

    mask = torch.zeros(1, 512, dtype=torch.bool, device=DEVICE)
    mask[:, :text_tokens] = True
    text = torch.zeros(1, 512, DIMS["text"], dtype=torch.bfloat16, device=DEVICE)
    text[:, :text_tokens] = randn(1, text_tokens, DIMS["text"])
    return dict(
        hidden_states=randn(1, 16, WINDOW, h, w),
        timestep=torch.tensor([992.0], device=DEVICE).to(torch.bfloat16),
        encoder_hidden_states=text,
        encoder_attention_mask=mask,
        pooled_projections=randn(1, DIMS["pooled"]),
        image_embeds=randn(1, 729, DIMS["image"]),
        indices_latents=layout.noisy.to(DEVICE),
        guidance=torch.tensor([9984.0], device=DEVICE).to(torch.bfloat16),
        latents_clean=randn(1, 16, 2, h, w),
        indices_latents_clean=layout.clean.to(DEVICE),
        latents_history_2x=randn(1, 16, 2, h, w),
        indices_latents_history_2x=layout.history_2x.to(DEVICE),
        latents_history_4x=randn(1, 16, 16, h, w),
        indices_latents_history_4x=layout.history_4x.to(DEVICE),
    )


def call_tokens(text_tokens: int = 24) -> int:
    """Tokens in one attention call: noisy + clean + 2x + 4x image tokens, SigLIP and text."""
    h, w = HEIGHT // 16, WIDTH // 16  # after the 2x2 patch
    noisy, clean = WINDOW * h * w, 2 * h * w
    x2 = 1 * -(-h // 2) * -(-w // 2)
    x4 = 4 * -(-h // 4) * -(-w // 4)
    return noisy + clean + x2 + x4 + 729 + text_tokens


def call(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def timed(fn, repeats: int) -> tuple[list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return times, out


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = (out.float() - ref.float())
    return {
        "max_abs_diff": float(diff.abs().max()),
        "rel_l2_error": float(diff.norm() / ref.float().norm()),
        "ref_abs_max": float(ref.float().abs().max()),
    }


def attention_in_blocks(model) -> str:
    return repr(block_attention_backend(getattr(model, "transformer", model)))  # a BlockLoopTransformer wraps it


class Bench:
    def __init__(self, out: Path, only: set[str] | None, repeats: int):
        self.out, self.only, self.repeats = out, only, repeats
        self.env = environment()
        self.ref: torch.Tensor | None = None
        self.stock_s: float | None = None

    def wanted(self, name: str) -> bool:
        return self.only is None or name in self.only

    def write(self, record: dict) -> None:
        record = {"bench": "speed_modes", "resolution": f"{WIDTH}x{HEIGHT}", "window": WINDOW, **record, **self.env}
        with self.out.open("a") as sink:
            sink.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    def stage(self, name: str, fn) -> None:
        if not self.wanted(name):
            return
        print(f"--- {name}", flush=True)
        try:
            record = fn()
        except Exception as error:  # record it and go on with the other modes
            traceback.print_exc()
            self.write({"mode": name, "error": f"{type(error).__name__}: {error}"[:2000]})
            return
        self.write({"mode": name, **record})

    def measure(self, model, inputs: dict, warmup: int = 1) -> dict:
        reset_peak()
        first_times, _ = timed(lambda: call(model, inputs), warmup)
        times, out = timed(lambda: call(model, inputs), self.repeats)
        step = statistics.median(times)
        record = {
            "s_per_step": round(step, 4),
            "step_times": [round(t, 4) for t in times],
            "first_call_s": round(first_times[0], 2),
            "peak_gpu_gb": peak_gb(),
            "attention_in_blocks": attention_in_blocks(model),
        }
        if self.ref is None:
            self.ref, self.stock_s = out.float().clone(), step
        else:
            record.update(compare(out, self.ref))
        if self.stock_s:
            record["speedup_vs_stock"] = round(self.stock_s / step, 3)
        return record


def kernel_row(name: str, run, flop: float) -> tuple[dict, torch.Tensor]:
    """One attention kernel timed alone: median of 5 calls after 2 warm-ups; returns (row, its output)."""
    timed(run, 2)
    times, out = timed(run, 5)
    ms = statistics.median(times) * 1e3
    return {"kernel": name, "ms": round(ms, 3), "tflops": round(flop / ms / 1e9, 1)}, out


def attention_kernels(tokens: int) -> list[dict]:
    """Each SDPA kernel alone at the blocks' shape (24 heads of 128, one sequence of `tokens`)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, 24, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flop = 4 * tokens * tokens * 128 * 24
    rows, reference = [], None
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                row, out = kernel_row(name, lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), flop)
            if reference is None:
                reference = out.float()
            else:
                row["max_abs_diff_vs_flash"] = float((out.float() - reference).abs().max())
            rows.append(row)
        except Exception as error:
            rows.append({"kernel": name, "error": f"{type(error).__name__}: {error}"[:300]})
    rows.append(flash3_alone(q, k, v, flop, reference))
    return rows


def flash3_alone(q, k, v, flop: float, reference: torch.Tensor | None) -> dict:
    """FlashAttention-3 on the same inputs, in its (batch, tokens, heads, head_dim) layout."""
    from engine.flash3_attention import flash3_attention, load

    problem = load()
    if problem:
        return {"kernel": "fa3", "error": problem[:300]}
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    row, out = kernel_row("fa3", lambda: flash3_attention(q, k, v), flop)
    if reference is not None:
        row["max_abs_diff_vs_flash"] = float((out.transpose(1, 2).float() - reference).abs().max())
    return row


def matmul_peak(size: int = 8192) -> dict:
    """The GPU's bf16 matrix rate on random data, the ceiling the blocks' products are held to."""
    a, b = (torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    timed(lambda: a @ b, 3)
    times, _ = timed(lambda: a @ b, 10)
    return {"size": size, "tflops": round(2 * size**3 / statistics.median(times) / 1e12, 1)}


KERNEL_KINDS = {
    "gemm": ("gemm", "matmul", "cutlass", "xmma", "nvjet", "cublas", "scaled_mm", "f8f8"),
    "attention": ("flash", "fmha", "cudnn", "attention", "sdpa"),
}


def profile_call(model, inputs: dict, path: Path) -> dict:
    """Where one call's GPU time goes: matrix products, attention, everything else (fused elementwise)."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if DEVICE == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        call(model, inputs)
        sync()
    events = prof.key_averages()
    path.write_text(events.table(sort_by="self_device_time_total", row_limit=30))
    totals = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for event in events:
        us = event.self_device_time_total if DEVICE == "cuda" else 0.0
        name = event.key.lower()
        kind = next((k for k, words in KERNEL_KINDS.items() if any(w in name for w in words)), "other")
        totals[kind] += us
    total = sum(totals.values()) or 1.0
    return {f"gpu_{k}_s": round(v / 1e6, 4) for k, v in totals.items()} | {
        f"gpu_{k}_share": round(v / total, 3) for k, v in totals.items()}


def host_to_device_gbps(gib: int = 2, registered: bool = False) -> float:
    from engine.offload import host_buffer

    src = host_buffer(gib * 2**30, True) if registered else torch.empty(gib * 2**30, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty_like(src, device="cuda")
    dst.copy_(src, non_blocking=True)
    times, _ = timed(lambda: dst.copy_(src, non_blocking=True), 3)
    return round(gib * 2**30 / statistics.median(times) / 1e9, 1)


def teacache_section(bench: Bench, model, inputs: dict, threshold: float, steps: int) -> dict:
    """One section of `steps` UniPC steps through the current fast path, with and without TeaCache."""
    from engine.denoiser import Conditioning, Guidance, SectionContext, make_denoiser
    from engine.teacache import TeaCache, TeaCacheTransformer
    from engine.unipc import flux_mu, flux_sigmas, sample_unipc

    cond = Conditioning(inputs["encoder_hidden_states"], inputs["encoder_attention_mask"],
                        inputs["pooled_projections"], inputs["image_embeds"])
    context = SectionContext(inputs["indices_latents"], inputs["latents_clean"], inputs["indices_latents_clean"],
                             inputs["latents_history_2x"], inputs["indices_latents_history_2x"],
                             inputs["latents_history_4x"], inputs["indices_latents_history_4x"])
    sigmas = flux_sigmas(steps, flux_mu(WINDOW * (HEIGHT // 8) * (WIDTH // 8) // 4)).to(DEVICE)
    noise = torch.randn(1, 16, WINDOW, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(1))
    noise = noise.to(DEVICE)

    def section(transformer):
        denoise = make_denoiser(transformer, cond, None, context, Guidance())
        with torch.no_grad():
            return sample_unipc(denoise, noise, sigmas)

    full_times, full = timed(lambda: section(model), 1)
    cache = TeaCache(threshold)
    cache.reset(steps)
    cached_times, cached = timed(lambda: section(TeaCacheTransformer(model, cache)), 1)
    return {
        "threshold": threshold, "steps": steps, "skipped_steps": cache.skipped,
        "section_s_without": round(full_times[0], 2), "section_s_with": round(cached_times[0], 2),
        "s_per_step": round(cached_times[0] / steps, 4),
        "speedup_vs_same_path_without": round(full_times[0] / cached_times[0], 3),
        "x0_rel_l2_error_vs_without": float((cached - full).norm() / full.norm()),
        "note": "random weights: how often TeaCache skips depends on the real model's dynamics",
    }


STAGES = ["host_to_device", "matmul_peak", "attention_kernels", "stock", "eager_cudnn", "fast", "graphed",
          "fast_fa3", "fa3_graphed", "profile_fast_fa3", "profile_stock_kernels", "profile_fast", "teacache_0.15",
          "teacache_0.10",
          "low", "low_3slots", "fp8", "fp8_attention", "fp8_attention_graphed", "low_fp8"]
ATTENTION = "cudnn"
build_model = full_transformer


def use_tiny_cpu_model() -> None:
    """Swap in the tests' tiny transformer on the CPU, eager "compile": checks this script's plumbing."""
    import sys

    global DEVICE, HEIGHT, WIDTH, ATTENTION, COMPILE_BACKEND, build_model
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from engine_inputs import tiny_transformer
    from tiny_models import HIDDEN

    DEVICE, HEIGHT, WIDTH, ATTENTION, COMPILE_BACKEND = "cpu", 64, 64, "sdpa", "eager"
    DIMS.update(text=HIDDEN, pooled=HIDDEN, image=HIDDEN)
    build_model = tiny_transformer


def profile_stock(model, inputs: dict, folder: Path) -> dict:
    """The stock path's breakdown: eager blocks and PyTorch's default SDPA, then back to the fast path."""
    uncompile_blocks(model)
    set_block_attention(model, "sdpa")
    try:
        return profile_call(model, inputs, folder / "profile_stock.txt")
    finally:
        set_block_attention(model, ATTENTION)
        compile_blocks(model, backend=COMPILE_BACKEND)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default=None, help="comma-separated stage names")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--teacache-steps", type=int, default=25)
    parser.add_argument("--attention", default=None, help="the fast path's kernel (default cudnn)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test of this script on a tiny model")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    if args.tiny:
        use_tiny_cpu_model()
        only = (only or set(STAGES)) - {"host_to_device", "attention_kernels", "matmul_peak"}
    if args.attention:
        global ATTENTION
        ATTENTION = args.attention
    bench = Bench(args.out, only, args.repeats)

    bench.stage("host_to_device", lambda: {"pinned_h2d_gbps": host_to_device_gbps(),
                                           "registered_h2d_gbps": host_to_device_gbps(registered=True)})
    bench.stage("matmul_peak", matmul_peak)
    t0 = time.perf_counter()
    model = build_model()
    sync()
    print(f"built the transformer in {time.perf_counter() - t0:.1f} s", flush=True)
    inputs = section_inputs()
    bench.stage("attention_kernels", lambda: {"tokens": call_tokens(), "kernels": attention_kernels(call_tokens())})

    bench.ref = None
    bench.stage("stock", lambda: {**bench.measure(model, inputs), "what": "diffusers forward, eager, PyTorch SDPA"})
    if bench.ref is None:  # stock skipped or failed: the others still need a reference
        bench.ref, bench.stock_s = call(model, inputs).float().clone(), None

    def eager_cudnn():
        set_block_attention(model, ATTENTION)
        return {**bench.measure(model, inputs), "what": "eager, cuDNN attention in the blocks"}

    bench.stage("eager_cudnn", eager_cudnn)

    def fast():
        set_block_attention(model, ATTENTION)
        compile_blocks(model, backend=COMPILE_BACKEND)
        record = bench.measure(model, inputs)  # first_call_s includes compiling
        return {**record, "what": f"high-VRAM fast path: regional torch.compile + {ATTENTION} attention"}

    bench.stage("fast", fast)

    def frontend(name: str, what: str):
        def stage():
            uncompile_blocks(model)
            set_block_attention(model, name)
            compile_blocks(model, backend=COMPILE_BACKEND)
            return {**bench.measure(model, inputs), "attention": name, "what": what}
        return stage

    def graphed(what: str, attention: str | None = None):
        """The current path with the blocks replayed from a CUDA graph: the same kernels, so the same output."""
        from benchmarks.graphed_blocks import GraphedBlocks
        from engine.packed_forward import BlockLoopTransformer
        from engine.speed import FRONTEND_KERNELS

        def stage():
            in_use = block_attention_backend(model)
            if attention is not None and in_use != FRONTEND_KERNELS[attention]:
                raise RuntimeError(f"the blocks run {in_use!r}, not {attention}: its own stage failed")
            plain = call(model, inputs).float()
            loop = GraphedBlocks()
            record = bench.measure(BlockLoopTransformer(model, loop), inputs, warmup=2)  # eager, then capture
            out = call(BlockLoopTransformer(model, loop), inputs).float()
            record.update({"replays": loop.replays, "bit_identical_to_ungraphed": bool(torch.equal(out, plain)),
                           "max_abs_diff_vs_ungraphed": float((out - plain).abs().max()), "what": what})
            loop.release()
            return record
        return stage

    bench.stage("graphed", graphed(f"fast path ({ATTENTION}) with the 60 blocks replayed from one CUDA graph"))
    bench.stage("fast_fa3", frontend("fa3", "high-VRAM fast path, FlashAttention-3 in the blocks"))
    bench.stage("fa3_graphed", graphed("fast path with FlashAttention-3, blocks replayed from one CUDA graph", "fa3"))
    bench.stage("profile_fast_fa3", lambda: profile_call(model, inputs, args.out.parent / "profile_fast_fa3.txt"))
    bench.stage("fast_fe", frontend(
        "cudnn-fe", "high-VRAM fast path, attention through the cuDNN frontend, tokens padded to 128 and masked"))
    bench.stage("profile_fast_fe", lambda: profile_call(model, inputs, args.out.parent / "profile_fast_fe.txt"))
    bench.stage("profile_stock_kernels", lambda: profile_stock(model, inputs, args.out.parent))
    bench.stage("profile_fast", lambda: profile_call(model, inputs, args.out.parent / "profile_fast.txt"))
    bench.stage("teacache_0.15", lambda: teacache_section(bench, model, inputs, 0.15, args.teacache_steps))
    bench.stage("teacache_0.10", lambda: teacache_section(bench, model, inputs, 0.10, args.teacache_steps))

    streamer_box = {}

    def low():
        from engine.offload import BlockStreamer
        from engine.speed import repeated_blocks

        t = time.perf_counter()
        streamer = BlockStreamer(model, repeated_blocks(model), slots=2, ahead=1)
        streamer_box["s"] = streamer
        packed = time.perf_counter() - t
        reset_peak()
        streamer.attach(DEVICE)
        record = bench.measure(model, inputs)
        record.update({"pack_into_pinned_s": round(packed, 1),
                       "device_bytes_gb": round(streamer.device_bytes / 2**30, 2),
                       "what": "low-VRAM: blocks streamed from pinned RAM, 2 slots per kind, fast path compute"})
        streamer.detach()
        return record

    bench.stage("low", low)

    def low_3slots():
        from engine.offload import BlockStreamer
        from engine.speed import repeated_blocks

        streamer_box["s"].close()
        streamer = BlockStreamer(model, repeated_blocks(model), slots=3, ahead=2)
        streamer_box["s"] = streamer
        reset_peak()
        streamer.attach(DEVICE)
        record = bench.measure(model, inputs)
        streamer.detach()
        return {**record, "what": "low-VRAM with 3 slots per kind, 2 blocks ahead"}

    bench.stage("low_3slots", low_3slots)

    def fp8():
        from engine.fp8 import quantize_blocks_fp8

        if "s" in streamer_box:  # back from pinned RAM to the GPU
            streamer_box.pop("s").close()
            model.to(DEVICE)
        reset_peak()
        uncompile_blocks(model)
        count = quantize_blocks_fp8(model, work_device=torch.device(DEVICE))
        reset_peak()
        set_block_attention(model, ATTENTION)
        compile_blocks(model, backend=COMPILE_BACKEND)
        record = bench.measure(model, inputs)
        return {**record, "fp8_linears": count, "what": "FP8 e4m3 row-wise linears + fast path"}

    bench.stage("fp8", fp8)
    bench.stage("fp8_attention", frontend(
        "cudnn-fp8", "FP8 linears + FP8 attention (cuDNN frontend, per-tensor scales, padded and masked)"))
    bench.stage("fp8_attention_graphed", graphed(
        "FP8 linears + FP8 attention, blocks replayed from one CUDA graph", "cudnn-fp8"))
    bench.stage("profile_fp8_attention",
                lambda: profile_call(model, inputs, args.out.parent / "profile_fp8_attention.txt"))

    def prompt_lengths():
        """A worker meets prompts of every length: the compiled blocks with the current attention kernel
        (FP8 attention, FA3) recompile for a new length (once dynamic) and must agree with PyTorch's attention
        on the same model at each."""
        lengths = (24, 77, 150, 31)
        kernel = attention_in_blocks(model)
        outputs = []
        for tokens in lengths:
            start = time.perf_counter()
            outputs.append((call(model, section_inputs(tokens)).float(), time.perf_counter() - start))
        uncompile_blocks(model)
        set_block_attention(model, "sdpa")
        compile_blocks(model, backend=COMPILE_BACKEND)
        rows = []
        for tokens, (out, seconds) in zip(lengths, outputs, strict=True):
            ref = call(model, section_inputs(tokens)).float()
            rows.append({"text_tokens": tokens, "first_call_s": round(seconds, 2), **compare(out, ref)})
        return {"lengths": rows, "attention_in_blocks": kernel,
                "what": "the blocks' kernel against sdpa on the same model, one call per prompt length"}

    bench.stage("prompt_lengths", prompt_lengths)

    def low_fp8():
        from engine.offload import BlockStreamer
        from engine.speed import repeated_blocks

        streamer = BlockStreamer(model, repeated_blocks(model), slots=2, ahead=1)
        reset_peak()
        streamer.attach(DEVICE)
        record = bench.measure(model, inputs)
        streamer.close()
        return {**record, "what": "low-VRAM streaming of the FP8 blocks"}

    bench.stage("low_fp8", low_fp8)


if __name__ == "__main__":
    main()
