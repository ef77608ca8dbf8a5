"""Whole jobs under simulated GPU-memory and RAM budgets, in one process on one GPU (issue 15's table).

    python -m benchmarks.memory_plans --budgets high,48:64,24:32,24:32@25,12:32 --out results.jsonl

Each budget "VRAM:RAM" (GiB; "@25" adds a copy link of 25 GB/s, a consumer PCIe 4.0 x16) is planned by
engine.memory_plan from the full-size models' real sizes, the models are placed as the plan says (the
compiled transformer is kept), torch's allocator is capped at the budget as a guard, and one whole job
runs. `high` is today's high mode.

With `--checkpoint DIR`, the built models are first written to DIR in the Hub layout and freed, and each
budget loads them with the bot's own loader (`engine.models.load_models` with the budget as
ENGINE_VRAM_GB/ENGINE_RAM_GB), so loading is measured too, as a worker on that host would load.

Host memory comes from /proc, sampled every 0.2 s, not from the plan's own figures: "private" is RssAnon
plus RssShmem (the pinned buffers are shared anonymous mappings), RssFile the mapped weights (page cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from benchmarks.engine_e2e import run
from benchmarks.full_size import full_models, save_checkpoint
from benchmarks.placing import place, slow_down_streaming
from engine.engine_options import EngineOptions
from engine.memory_plan import GB, Budget, high_plan, low_plan, plan_memory, sizes_of_modules
from engine.models import FramePackModels, checkpoint_sizes, load_models
from engine.prompt_cache import PromptCache
from engine.render import RenderRequest
from engine.sections import Variant
from engine.speed import repeated_blocks

PROMPTS = ("A character doing some simple body movements.", "The girl dances gracefully, with clear movements.")


class HostMemory:
    """Peak private memory (RssAnon + RssShmem), RssAnon and RssFile of this process while running, from
    /proc/self/status."""

    def __init__(self):
        self.peak = {"private": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = {}
            with open("/proc/self/status") as status:
                for line in status:
                    name, _, value = line.partition(":")
                    if name in ("RssAnon", "RssFile", "RssShmem"):
                        now[name] = int(value.split()[0]) * 1024
            now["private"] = now["RssAnon"] + now.get("RssShmem", 0)
            for name in self.peak:
                self.peak[name] = max(self.peak[name], now[name])
            self._stop.wait(0.2)

    def figures(self, prefix: str) -> dict:
        return {f"{prefix}_{name.lower()}_gb": round(value / GB, 2) for name, value in self.peak.items()}

    def __enter__(self) -> HostMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def copy_link() -> tuple[float, float]:
    """(pinned host-to-GPU bytes/s, GPU clock cycles/s of torch.cuda._sleep), measured here."""
    source = torch.empty(2 * GB, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(2 * GB, dtype=torch.uint8, device="cuda")
    target.copy_(source, non_blocking=True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        target.copy_(source, non_blocking=True)
    end.record()
    end.synchronize()
    bandwidth = 3 * 2 * GB / (start.elapsed_time(end) / 1000)
    start.record()
    torch.cuda._sleep(200_000_000)
    end.record()
    end.synchronize()
    cycles = 200_000_000 / (start.elapsed_time(end) / 1000)
    del source, target
    torch.cuda.empty_cache()
    return bandwidth, cycles


def load_budget(checkpoint: Path, label: str, vram: float | None, ram: float | None, cache_dir: Path,
                slow_cycles_per_byte: float) -> FramePackModels:
    """The models as a worker with this budget loads them (ENGINE_MEMORY_MODE, ENGINE_VRAM_GB, ENGINE_RAM_GB)."""
    fp8 = label.endswith("/fp8")  # FP8 weights widened to bf16 per call, as on a GPU without FP8 tensor cores
    # The decoder stays eager, as by default (ENGINE_COMPILE_VAE): compiled without a warm-up it took 150 s of
    # a job's decodes here.
    options = EngineOptions(memory_mode="auto" if vram is not None else label, vram_gb=vram, ram_gb=ram,
                            cache_dir=cache_dir, fp8=fp8, fp8_storage_only=fp8, compile_vae=False)
    if label.endswith("/whole"):  # the plan of whole blocks, their modulation linears in them (the A/B)
        import engine.models

        sized = engine.models.checkpoint_sizes
        engine.models.checkpoint_sizes = lambda *a, **k: dataclasses.replace(sized(*a, **k), modulation=())
    models = load_models(Variant.ORIGINAL, torch.device("cuda"), checkpoint, allow_download=False, options=options)
    slow_down_streaming(models.transformer, models.encoders.text_encoder, slow_cycles_per_byte)
    return models


def against_the_first(work: Path, first: Path) -> dict:
    """The job's sampled latents against those of the first budget run on the same checkpoint (today's high
    mode when the list starts with it): same prompt, seed and weights, so only the placement differs."""
    latents = torch.cat([torch.load(path)["generated"].float() for path in sorted(work.glob("latents_*.pt"))], dim=2)
    if not first.is_file():
        first.parent.mkdir(parents=True, exist_ok=True)
        torch.save(latents, first)
        return {"latents_vs_first_budget": "this is the first"}
    reference = torch.load(first)
    if reference.shape != latents.shape:
        return {"latents_vs_first_budget": f"shapes differ: {tuple(reference.shape)} vs {tuple(latents.shape)}"}
    difference = latents - reference
    return {"latents_vs_first_budget": {
        "bit_identical": bool(torch.equal(latents, reference)),
        "max_abs": round(difference.abs().max().item(), 5),
        "rel_l2": round((difference.norm() / reference.norm()).item(), 6),
    }}


def parse_budget(text: str) -> tuple[str, float | None, float | None, float | None]:
    """'high' | 'low' | 'VRAM:RAM[@GBps][/whole|/fp8]' -> (label, vram GiB, ram GiB, link GB/s); '/whole'
    plans whole blocks, as before the AdaLN modulation was worked out per section; '/fp8' stores the blocks
    in FP8 and computes in bf16 (ENGINE_FP8 on a GPU without FP8 tensor cores)."""
    if text in ("high", "low"):
        return text, None, None, None
    budget, _, link = text.partition("/")[0].partition("@")
    vram, ram = (float(x) for x in budget.split(":"))
    return text, vram, ram, float(link) if link else None


def write_checkpoint_and_run_each(args: argparse.Namespace) -> None:
    """The models written once, then each budget in a fresh process that loads them as a worker would: no
    earlier budget's memory, compiled graphs or page-cache state of its own in the figures."""
    t = time.perf_counter()
    save_checkpoint(full_models(Variant.ORIGINAL), args.checkpoint)
    gc.collect()
    torch.cuda.empty_cache()  # the built models' memory back to the GPU for the budgets' processes
    print(f"wrote the checkpoint in {time.perf_counter() - t:.1f} s", flush=True)
    for number, text in enumerate(args.budgets.split(",")):
        command = [sys.executable, "-m", "benchmarks.memory_plans", "--budgets", text, "--first-number", str(number),
                   "--checkpoint", str(args.checkpoint), "--loaded", "--seconds", str(args.seconds),
                   "--steps", str(args.steps), "--reroll", args.reroll, "--cache", str(args.cache),
                   "--work", str(args.work), "--out", str(args.out), "--note", args.note]
        if args.reference:
            command += ["--reference", str(args.reference)]
        subprocess.run(command, check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="high,48:64,24:32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--reroll", default="", help="a budget after whose job a re-roll (same prompt) runs")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/framepack_cache"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/memory_plans"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--note", default="")
    parser.add_argument("--reference", type=Path, help="the first budget's latents (written when missing)")
    parser.add_argument("--checkpoint", type=Path, help="write the models here; each budget loads them from it")
    parser.add_argument("--loaded", action="store_true", help="(internal) the checkpoint is written: load it here")
    parser.add_argument("--first-number", type=int, default=0, help="(internal) the first budget's number")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.checkpoint and not args.loaded:
        write_checkpoint_and_run_each(args)
        return
    options = EngineOptions(cache_dir=args.cache)
    t0 = time.perf_counter()
    if args.checkpoint:
        built = None
        sizes = checkpoint_sizes(Variant.ORIGINAL, torch.device("cuda"), options, args.checkpoint, False)
    else:
        built = full_models(Variant.ORIGINAL)
        torch.cuda.synchronize()
        print(f"built the models in {time.perf_counter() - t0:.1f} s", flush=True)
        sizes = sizes_of_modules(built.encoders, built.transformer, repeated_blocks(built.transformer))
    bandwidth, cycles_per_s = copy_link()
    total = torch.cuda.get_device_properties(0).total_memory
    print(f"pinned host-to-GPU {bandwidth / 1e9:.1f} GB/s; sizes {sizes}", flush=True)
    cache = PromptCache(args.cache / "prompts", "benchmark random weights")
    for number, text in enumerate(args.budgets.split(","), start=args.first_number):
        label, vram, ram, link = parse_budget(text)
        if built is None and label.endswith("/fp8"):
            sizes = checkpoint_sizes(Variant.ORIGINAL, torch.device("cuda"), EngineOptions(fp8=True), args.checkpoint,
                                     False)
        planned = dataclasses.replace(sizes, modulation=()) if label.endswith("/whole") else sizes
        plan = {"high": high_plan, "low": low_plan}[label](sizes) if vram is None else \
            plan_memory(Budget(int(vram * GB), int(ram * GB)), planned)
        slow = 0.0 if link is None else max(1 / (link * 1e9) - 1 / bandwidth, 0.0) * cycles_per_s
        print(f"== {label}: {plan.describe(sizes)}", flush=True)
        t = time.perf_counter()
        with HostMemory() as loading:
            if built is None:
                models = load_budget(args.checkpoint, label, vram, ram, args.cache / f"budget-{number}", slow)
                plan = models.plan
            else:
                models = place(built, plan, options, slow, cache)
        prepared = time.perf_counter() - t
        print(f"loaded and placed in {prepared:.1f} s: {loading.figures('load_peak')}", flush=True)
        fraction = min((vram or total / GB) * GB / total, 1.0)
        torch.cuda.set_per_process_memory_fraction(fraction)
        # loaded budgets each have their own prompt cache: one prompt for all, so their videos compare
        prompt = PROMPTS[0] if built is None else PROMPTS[number % 2]
        jobs = [prompt] + ([prompt] if text == args.reroll else [])
        for seed, prompt in enumerate(jobs):
            request = RenderRequest(prompt=prompt, seconds=args.seconds, steps=args.steps, seed=seed + 1)
            try:
                with HostMemory() as host:
                    record = run(models, label, request, args.work)
                record.update(host.figures("job_peak"))
                if built is None and seed == 0:
                    reference = args.reference or args.cache / "first_budget_latents.pt"
                    record.update(against_the_first(args.work, reference))
            except torch.OutOfMemoryError as error:
                record = {"error": f"out of GPU memory under the budget: {str(error)[:200]}"}
            record.update({
                "bench": "memory_plans", "budget": label, "vram_budget_gb": vram, "ram_budget_gb": ram,
                "link_gb_per_s": link, "plan": plan.describe(sizes), "prepare_s": round(prepared, 1),
                "reroll": seed > 0, "pinned_h2d_gb_per_s": round(bandwidth / 1e9, 1), "note": args.note,
                "loaded_by": "placed in memory" if built is not None else "engine.models.load_models",
                **loading.figures("load_peak"),
            })
            with args.out.open("a") as sink:
                sink.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
        torch.cuda.set_per_process_memory_fraction(1.0)


if __name__ == "__main__":
    main()
