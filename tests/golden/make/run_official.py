"""Runs lllyasviel/FramePack's own demo loops (demo_gradio.py / demo_gradio_f1.py, unmodified) on the tiny
golden weights, on the CPU, for every case in tests/golden/cases.json, and records what they compute.

Usage (official venv: torch 2.13.0 CPU, diffusers 0.33.1, transformers 4.46.2, accelerate 1.6.0):
    PYTHONPATH=stubs venv/bin/python run_official.py OFFICIAL_CHECKOUT CASES_JSON INPUTS_DIR OUT_DIR [case ...]

What is patched around the demo, never inside it:
- `gradio` is a MagicMock (the UI is built and "launched" as a no-op); `cv2` and `torchvision` are stubs
  (neither installs beside this torch; the loop only reaches torchvision.io.write_video, which records).
- diffusers_helper.memory's `gpu` is the CPU and its free-memory probe says 80 GB (high-VRAM mode: every model
  stays where it is, the VAE untiled), so the demo runs whole on the CPU.
- Recording wrappers around the demo's module globals: resize_and_center_crop, encode_prompt_conds,
  crop_or_pad_yield_mask, hf_clip_vision_encode (and the processor's preprocess), vae_encode, sample_hunyuan.
  They pass arguments and results through untouched.
- vae_encode seeds torch's global RNG with the job's seed just before the demo's own call, which draws the
  posterior sample from that RNG (the project draws it from a generator seeded with the same number).
- vae_decode returns zeros of the decode's shape: pixels are not compared, latents do not depend on them,
  and the tiny VAE's fp16 decode at 640x608 takes minutes per section on a CPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

official, cases_path, inputs_dir, out_dir = (Path(a) for a in sys.argv[1:5])
only = set(sys.argv[5:])
out_dir.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)  # a fixed thread count: the same reduction order whatever the machine

sys.path.insert(0, str(official))
sys.modules["gradio"] = mock.MagicMock()
torch.cuda.current_device = lambda: 0  # memory.py builds `gpu` from it at import; replaced by the CPU below
import diffusers_helper.memory as memory  # noqa: E402

memory.gpu = torch.device("cpu")
memory.get_cuda_free_memory_gb = lambda device=None: 80.0

import torchvision.io  # noqa: E402  (the stub)

spec = json.loads(cases_path.read_text())


def load_demo(name: str):
    sys.argv = [name]
    module_spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), official / name)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def recording(record: list, function):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        record.append((args, kwargs, result))
        return result
    return wrapper


def run_case(demo, case: dict, work: Path) -> dict:
    seen = {k: [] for k in ("crop", "prompt", "pad", "clip_vision", "preprocess", "vae_encode", "sample")}
    originals = {n: getattr(demo, n) for n in ("resize_and_center_crop", "encode_prompt_conds",
                                                "crop_or_pad_yield_mask", "hf_clip_vision_encode", "vae_encode",
                                                "sample_hunyuan", "vae_decode")}
    demo.resize_and_center_crop = recording(seen["crop"], originals["resize_and_center_crop"])
    demo.encode_prompt_conds = recording(seen["prompt"], originals["encode_prompt_conds"])
    demo.crop_or_pad_yield_mask = recording(seen["pad"], originals["crop_or_pad_yield_mask"])
    demo.hf_clip_vision_encode = recording(seen["clip_vision"], originals["hf_clip_vision_encode"])
    preprocess = demo.feature_extractor.preprocess
    demo.feature_extractor.preprocess = recording(seen["preprocess"], preprocess)

    def seeded_vae_encode(image, vae):
        torch.manual_seed(case["seed"])
        return originals["vae_encode"](image, vae)

    demo.vae_encode = recording(seen["vae_encode"], seeded_vae_encode)

    def sample_recording(**kwargs):
        before = kwargs["generator"].get_state().clone()
        result = originals["sample_hunyuan"](**kwargs)
        seen["sample"].append({"generator_before": before, "result": result.clone(),
                               **{k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}})
        return result

    demo.sample_hunyuan = sample_recording

    def zeros_decode(latents, vae, image_mode=False):
        b, _, t, h, w = latents.shape
        return torch.zeros((b, 3, 4 * t - 3, h * 8, w * 8), dtype=vae.dtype)

    demo.vae_decode = zeros_decode
    transformer_calls, block_runs = [], []
    hooks = [demo.transformer.register_forward_pre_hook(lambda *_: transformer_calls.append(1)),
             demo.transformer.transformer_blocks[0].register_forward_pre_hook(lambda *_: block_runs.append(1))]
    demo.stream = demo.AsyncStream()
    for old in Path("outputs").glob("*.png"):
        old.unlink()
    picture = np.array(Image.open(inputs_dir / case["picture"]).convert("RGB"))
    torchvision.io.written.clear()
    start = time.time()
    try:
        demo.worker(picture, case["prompt"], case["negative_prompt"], case["seed"], case["seconds"], case["window"],
                    case["steps"], case["cfg"], case["distilled_guidance"], case["cfg_rescale"], 6.0,
                    case["teacache"], 16)
    finally:
        for name, function in originals.items():
            setattr(demo, name, function)
        demo.feature_extractor.preprocess = preprocess
        for hook in hooks:
            hook.remove()
    messages = []
    while (item := demo.stream.output_queue.pop()) is not None:
        messages.append(item)
    if messages[-1][0] != "end" or not seen["sample"]:
        raise RuntimeError(f"the demo's worker did not finish case {case['name']}: {messages[-3:]}")
    expected_sections = max(round(case["seconds"] * 30 / (case["window"] * 4)), 1)
    if len(seen["sample"]) != expected_sections:
        raise RuntimeError(f"{case['name']}: {len(seen['sample'])} sections, expected {expected_sections}")
    previews = [data[0] for flag, data in messages if flag == "progress" and data[0] is not None]
    saved_png = sorted(Path("outputs").glob("*.png"))[-1]
    prompts = [(args[0], result) for args, _, result in seen["prompt"]]
    return {
        "case": case,
        "seconds_taken": time.time() - start,
        "crop": seen["crop"][0][2],
        "crop_png": np.array(Image.open(saved_png)),
        "prompts": prompts,
        "padded": [result for _, _, result in seen["pad"]],
        "pixel_values": seen["preprocess"][0][2]["pixel_values"],
        "siglip": seen["clip_vision"][0][2].last_hidden_state,
        "start_latent": seen["vae_encode"][0][2],
        "sections": seen["sample"],
        "previews": previews,
        "transformer_calls": len(transformer_calls),
        "block_runs": len(block_runs),
    }


def main():
    import os

    cases = [{**spec["defaults"], **c} for c in spec["cases"] if not only or c["name"] in only]
    for demo_name in ("demo_gradio.py", "demo_gradio_f1.py"):
        variant = "original" if demo_name == "demo_gradio.py" else "f1"
        todo = [c for c in cases if c["variant"] == variant]
        if not todo:
            continue
        os.chdir(out_dir)
        demo = load_demo(demo_name)
        for case in todo:
            record = run_case(demo, case, out_dir)
            torch.save(record, out_dir / f"{case['name']}.pt")
            print(f"{case['name']}: {len(record['sections'])} sections, {record['transformer_calls']} calls, "
                  f"{record['block_runs']} with blocks, {record['seconds_taken']:.1f} s", flush=True)


main()
