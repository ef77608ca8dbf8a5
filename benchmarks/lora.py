"""Seconds per step with 0, 1 and 3 LoRAs, unfused and fused, and the switch between jobs, in one process.

    python -m benchmarks.lora --out results.jsonl            # the GPU: full-size random weights, ~4-5 min
    python -m benchmarks.lora --out /tmp/lora.jsonl --tiny   # the CPU: the tests' tiny model, checks the script

The full-size transformer with seeded random weights (benchmarks/full_size.py), the worker's fast path (its
attention kernel, regional torch.compile), one original-variant section call per step (speed_modes' inputs,
640x608, window 9, cfg 1). Three rank-32 LoRAs over every attention and feed-forward linear of the 60 blocks,
written as files in three formats and read back as a job would. The stages run as a warm worker meets them:

    none          today's s/step (the compiled blocks, no LoRA)
    unfused_1     LoRA A; the first call after the switch compiles the wrapped blocks (once per set of linears)
    unfused_3     A, B and C (rank 96 in one pair per linear; the rank is dynamic: no recompile expected)
    unfused_1_b   B alone: another LoRA on the same linears, as the next job would switch
    none_again    back to no LoRA (the first graph again, no recompile): its output against `none`'s (bit for
                  bit in the CPU tests; on the H200 on 2026-12-03 rel_l2 4.4e-3, bf16-sized, cause not found)
    fused_1/3     merged into the weights (originals kept in RAM); `switch_s` includes the merge
    none_last     unfused back, weights restored (bit for bit in the CPU tests), and today's s/step at the end

Each stage writes one JSON line: switch_s (use_loras, synchronized), first_call_s (includes any compile),
s_per_step (median of --steps calls), its output against `none`'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import speed_modes
from benchmarks.speed_modes import call, environment, peak_gb, reset_peak, section_inputs, sync

RANK = 32
STRENGTHS = {"a": 0.8, "b": 0.6, "c": 0.4}
FORMATS = {"a": "diffusers", "b": "musubi-framepack", "c": "original-peft"}


def write_loras(model, folder: Path) -> dict:
    """Three rank-32 files over the blocks' attention and feed-forward linears, one per format."""
    from lora_files import attention_and_ff, write_lora  # benchmarks.full_size put tests/ on the path

    from engine.lora import LoraChoice

    choices = {}
    for seed, (name, fmt) in enumerate(FORMATS.items()):
        path = write_lora(folder / f"{name}.safetensors", model, fmt, rank=RANK, alpha=RANK, seed=seed,
                          only=attention_and_ff, std=0.02)
        choices[name] = LoraChoice(name, str(path), "", STRENGTHS[name])
    return choices


def measure(model, inputs: dict, loras: list, fused: bool, steps: int, reference: torch.Tensor | None) -> dict:
    from engine.lora import use_loras

    device = next(model.parameters()).device
    sync()
    start = time.perf_counter()
    use_loras(model, loras, device, fused=fused)
    sync()
    switch = time.perf_counter() - start
    reset_peak()
    start = time.perf_counter()
    out = call(model, inputs).float()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        call(model, inputs)
        sync()
        times.append(time.perf_counter() - start)
    record = {"loras": [lora.name for lora in loras], "fused": fused, "switch_s": round(switch, 3),
              "first_call_s": round(first, 3), "s_per_step": round(statistics.median(times), 4),
              "steps_timed": steps, "peak_gpu_gb": peak_gb()}
    if reference is not None:
        difference = out - reference
        record["vs_none"] = {"bit_identical": bool(torch.equal(out, reference)),
                             "rel_l2": round(float(difference.norm() / reference.norm()), 6)}
    return record | {"output": out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=5, help="timed calls per stage (after the first)")
    parser.add_argument("--no-compile", action="store_true", help="eager blocks (no compile to measure)")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run of this script on the tests' tiny model")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.tiny:
        speed_modes.use_tiny_cpu_model()
    from engine.speed import compile_blocks, default_attention, set_block_attention

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = speed_modes.build_model()
    sync()
    built = time.perf_counter() - t0
    device = torch.device(speed_modes.DEVICE)
    attention = default_attention(device) if device.type == "cuda" else "sdpa"
    set_block_attention(model, attention)
    if not args.no_compile:
        compile_blocks(model, backend=speed_modes.COMPILE_BACKEND)
    inputs = section_inputs()
    common = {"bench": "lora", "rank_each": RANK, "targets": "attention + feed-forward of every block",
              "attention": attention, "compiled": not args.no_compile, "built_s": round(built, 1),
              "note": args.note}
    env = environment()
    with tempfile.TemporaryDirectory(prefix="framepack-lora-") as folder:
        t0 = time.perf_counter()
        loras = write_loras(model, Path(folder))
        common["wrote_loras_s"] = round(time.perf_counter() - t0, 1)
        a, b, c = loras["a"], loras["b"], loras["c"]
        stages = [("none", [], False), ("unfused_1", [a], False), ("unfused_3", [a, b, c], False),
                  ("unfused_1_b", [b], False), ("none_again", [], False), ("fused_1", [a], True),
                  ("fused_3", [a, b, c], True), ("none_last", [], False)]
        reference, unfused = None, {}
        for stage, chosen, fused in stages:
            try:
                record = measure(model, inputs, chosen, fused, args.steps, reference)
            except Exception as error:  # a stage that fails still lets the next ones run
                record = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            out = record.pop("output", None)
            if stage == "none":
                reference = out
            if out is not None and not fused:
                unfused[tuple(lora.name for lora in chosen)] = out
            twin = unfused.get(tuple(lora.name for lora in chosen))
            if fused and out is not None and twin is not None:
                record["fused_vs_unfused_rel_l2"] = round(float((out - twin).norm() / twin.norm()), 6)
            record = {"stage": stage, **record, **common}
            with args.out.open("a") as sink:
                sink.write(json.dumps({**record, **env}) + "\n")
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
