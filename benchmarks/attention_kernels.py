"""Attention kernels alone at FramePack's shape: PyTorch SDPA (cuDNN, FlashAttention) against the cuDNN frontend
package in bf16 and in FP8 (e4m3, one scale per tensor).

    python -m benchmarks.attention_kernels --out results.jsonl [--tokens 18253] [--only torch_cudnn,fe_fp8]

One transformer block's attention: q, k, v of (batch 1, 24 heads, 18,253 tokens, head_dim 128), bf16,
no mask, scale 1/sqrt(128). Each kernel runs on two memory layouts of the same values: "bshd", the
(batch, tokens, heads, head_dim) order the QKV projection leaves, and "bhsd", heads outermost. Times are the
median of CUDA-event timed calls after warm-up; TFLOP/s counts 4·B·H·N²·D. Errors are against PyTorch's cuDNN
kernel on the bhsd layout. Each kernel runs in its own try: a failure writes its error and the next one runs.
The cuDNN frontend (`import cudnn`) is imported only by its kernels, so the others run without it.

Kernels: torch_cudnn, torch_flash (PyTorch SDPA with that backend forced); fe_bf16 (engine.cudnn_attention's
bf16 graph, as the frontend routes it) and fe_bf16_backend (the cuDNN library only, the frontend's own Python
kernels deselected); fe_fp8_kernel(_backend) (the FP8 kernel alone on inputs quantized beforehand; its error
is measured after dequantizing); fe_fp8 (quantize q, k, v + kernel + dequantize: what a caller pays);
fp8_quantize_qkv (the quantization alone). The "plan" field names the engine that served a frontend graph.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

SHAPE = dict(batch=1, heads=24, tokens=18253, head_dim=128)
LAYOUTS = ("bhsd", "bshd")


def environment() -> dict:
    env = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
    }
    try:  # the frontend is optional: its absence is a result too
        import cudnn

        env["cudnn_backend"] = cudnn.backend_version()
        env["cudnn_frontend"] = getattr(cudnn, "__version__", "?")
    except Exception as error:
        env["cudnn_frontend"] = f"unavailable: {type(error).__name__}: {error}"[:300]
    return env


def inputs(shape: dict, layout: str, seed: int) -> tuple[torch.Tensor, ...]:
    """q, k, v as (batch, tokens, heads, head_dim) views; the layout decides only the memory order beneath.

    The same seed gives the same values in both layouts, so every kernel is compared with one reference.
    """
    g = torch.Generator("cuda").manual_seed(seed)
    b, s, h, d = shape["batch"], shape["tokens"], shape["heads"], shape["head_dim"]
    out = []
    for _ in range(3):
        t = torch.randn(b, s, h, d, generator=g, device="cuda", dtype=torch.bfloat16)
        out.append(t if layout == "bshd" else t.transpose(1, 2).contiguous().transpose(1, 2))
    return tuple(out)


def cuda_ms(fn, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each timed call, by CUDA events around it (host overhead counts where it stalls the GPU)."""
    for _ in range(warmup):
        fn()
    events = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = out.float() - ref.float()
    return {
        "max_abs_diff": float(diff.abs().max()),
        "rel_l2": float(diff.norm() / ref.float().norm()),
    }


# --- kernels: each returns (a callable to time, a function from its result to a bf16 bshd tensor) ----------


def torch_sdpa(backend_name: str):
    def make(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)
        # SDPA wants (batch, heads, tokens, head_dim): a transposed view, no copy.
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))

        def run():
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, scale=1 / math.sqrt(q.shape[-1]))

        return run, lambda out: out.transpose(1, 2)

    return make


def fe_bf16(backend_only: bool):
    """The frontend's bf16 graph; backend_only keeps its own Python kernels out, so the cuDNN library serves it."""

    def make(q, k, v):
        from engine.cudnn_attention import cudnn_sdpa

        return (lambda: cudnn_sdpa(q, k, v, fp8=False, backend_only=backend_only)), (lambda out: out)

    return make


def fe_fp8_kernel(backend_only: bool):
    """The FP8 kernel alone, on inputs quantized beforehand (the quantization is timed in fe_fp8)."""

    def make(q, k, v):
        from engine.cudnn_attention import dequantize, fp8_kernel, quantize_fp8

        (q8, dq), (k8, dk), (v8, dv) = (quantize_fp8(t) for t in (q, k, v))
        run = lambda: fp8_kernel(q8, k8, v8, dq, dk, dv, backend_only=backend_only)  # noqa: E731
        return run, (lambda result: dequantize(*result))

    return make


def fe_fp8(q, k, v):
    """What a caller pays: amax, scale and cast of q, k and v, the kernel, and on Hopper the output's dequantization."""
    from engine.cudnn_attention import cudnn_sdpa

    return (lambda: cudnn_sdpa(q, k, v, fp8=True)), (lambda out: out)


def fp8_quantize_only(q, k, v):
    """Quantizing q, k and v alone, to split fe_fp8's time into quantization and kernel."""
    from engine.cudnn_attention import quantize_fp8

    return (lambda: [quantize_fp8(t) for t in (q, k, v)]), None


def block_attention_compiled(fp8: bool):
    """engine's block_attention as the compiled blocks run it: padded to 128 and masked, padding and
    quantization fused by torch.compile around the cuDNN call (bshd is the blocks' layout)."""
    def make(q, k, v):
        from engine.cudnn_attention import block_attention

        fn = torch.compile(lambda a, b, c: block_attention(a, b, c, fp8=fp8), dynamic=False)
        return (lambda: fn(q, k, v)), (lambda out: out)

    return make


KERNELS = {
    "torch_cudnn": torch_sdpa("CUDNN_ATTENTION"),
    "torch_flash": torch_sdpa("FLASH_ATTENTION"),
    "fe_bf16": fe_bf16(backend_only=False),
    "fe_bf16_backend": fe_bf16(backend_only=True),
    "fe_fp8_kernel": fe_fp8_kernel(backend_only=False),
    "fe_fp8_kernel_backend": fe_fp8_kernel(backend_only=True),
    "fe_fp8": fe_fp8,
    "fp8_quantize_qkv": fp8_quantize_only,
    "block_bf16_padded": block_attention_compiled(fp8=False),
    "block_fp8_padded": block_attention_compiled(fp8=True),
}


def fe_plans(before: set) -> list[str] | None:
    """Which engine serves the cuDNN frontend graphs built since `before` (None when the frontend is not loaded)."""
    try:
        from engine.cudnn_attention import cached_graphs, plan_name
    except Exception:
        return None
    new = [plan_name(built) for key, built in cached_graphs().items() if key not in before]
    return new or None


def fe_graph_keys() -> set:
    try:
        from engine.cudnn_attention import cached_graphs

        return set(cached_graphs())
    except Exception:
        return set()


class Bench:
    def __init__(self, args, env: dict):
        self.args, self.env = args, env
        self.shape = {**SHAPE, "tokens": args.tokens}
        s = self.shape
        self.flop = 4 * s["batch"] * s["heads"] * s["tokens"] ** 2 * s["head_dim"]
        self.ref: torch.Tensor | None = None
        self.ref_kernel: str | None = None
        self.done: set[str] = set()  # "kernel/layout" already measured

    def write(self, record: dict) -> None:
        record = {"bench": "attention_kernels", **record, **self.shape, **self.env}
        with Path(self.args.out).open("a") as sink:
            sink.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    def run(self, name: str, layout: str) -> torch.Tensor | None:
        """Times one kernel on one layout and writes its line; returns its bf16 bshd output."""
        print(f"--- {name} {layout}", flush=True)
        self.done.add(f"{name}/{layout}")
        record = {"kernel": name, "layout": layout}
        out = None
        try:
            q, k, v = inputs(self.shape, layout, self.args.seed)
            keys = fe_graph_keys()
            fn, to_bshd = KERNELS[name](q, k, v)
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()  # the first call builds (plans, compiles) what it needs
            torch.cuda.synchronize()
            record["first_call_s"] = round(time.perf_counter() - start, 3)
            times = cuda_ms(fn, self.args.warmup, self.args.repeats)
            ms = statistics.median(times)
            record.update(ms=round(ms, 3), times_ms=[round(t, 3) for t in times])
            if to_bshd is not None:  # an attention result, not a helper step
                record["tflops"] = round(self.flop / ms / 1e9, 1)
                out = to_bshd(fn())
                if self.ref is not None:
                    record.update(compare(out, self.ref), ref_kernel=self.ref_kernel)
            plans = fe_plans(keys)
            if plans:
                record["plan"] = plans
        except Exception as error:  # record it and go on with the other kernels
            traceback.print_exc()
            record["error"] = f"{type(error).__name__}: {error}"[:2000]
            out = None
        self.write(record)
        torch.cuda.empty_cache()
        return out

    def reference(self) -> None:
        """PyTorch's cuDNN kernel on bhsd is the reference; FlashAttention stands in if it fails."""
        for name in ("torch_cudnn", "torch_flash"):
            out = self.run(name, "bhsd")
            if out is not None:
                self.ref, self.ref_kernel = out.clone(), f"{name}/bhsd"
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON lines file to append to")
    parser.add_argument("--tokens", type=int, default=SHAPE["tokens"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help=f"comma-separated kernels among {','.join(KERNELS)}")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated, among bhsd,bshd")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_kernels needs a CUDA GPU")

    bench = Bench(args, environment())
    only = set(args.only.split(",")) if args.only else set(KERNELS)
    unknown = only - set(KERNELS)
    if unknown:
        raise SystemExit(f"unknown kernels: {', '.join(sorted(unknown))}")
    layouts = args.layouts.split(",")
    bench.reference()  # torch_cudnn/bhsd (or torch_flash/bhsd) first: every later line compares with it
    for name in KERNELS:
        for layout in layouts:
            if name in only and f"{name}/{layout}" not in bench.done:
                bench.run(name, layout)


if __name__ == "__main__":
    main()
