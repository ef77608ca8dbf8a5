"""The speed modes' code paths on the CPU: packed forward, TeaCache, FP8, regional compile, attention choice."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_picture
from engine_inputs import forward_inputs, stock, tiny_transformer
from helpers import video_frames

from engine.fp8 import Float8Linear, Float8StoredLinear, fp8_supported, quantize_blocks_fp8
from engine.offload import BlockStreamer
from engine.packed_forward import packed_forward
from engine.render import Paused, RenderRequest, render
from engine.speed import ATTENTION_BACKENDS, compile_blocks, repeated_blocks, set_block_attention, uncompile_blocks
from engine.teacache import RESCALE, TeaCache, TeaCacheTransformer, rescale

TINY = dict(prompt="a cat dances", steps=4, resolution=64, variant="original")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_packed_forward_is_the_stock_forward_bit_for_bit():
    model = tiny_transformer(dual=2, single=3)
    for seed, sigma in [(1, 0.99), (2, 0.5), (3, 0.05)]:
        inputs = forward_inputs(seed, sigma)
        with torch.no_grad():
            assert torch.equal(packed_forward(model, **inputs), stock(model, inputs))


def test_teacache_rescale_is_the_official_polynomial():
    assert rescale(0.0) == pytest.approx(RESCALE[-1])
    x = 0.2
    expected = 733.226126 * x**4 - 401.131952 * x**3 + 67.5869174 * x**2 - 3.149878 * x + 0.0961237896
    assert rescale(x) == pytest.approx(expected)
    assert min(rescale(i / 1000) for i in range(1000)) > 0.05  # so a threshold under 0.05 never skips


def _calls(model, cache: TeaCache, count: int) -> list[torch.Tensor]:
    cached = TeaCacheTransformer(model, cache)
    with torch.no_grad():
        return [cached(**forward_inputs(1, sigma=1 - i / count))[0] for i in range(count)]


def test_teacache_under_its_smallest_step_never_skips_and_matches_stock():
    model = tiny_transformer()
    cache = TeaCache(threshold=0.05)
    cache.reset(6)
    outputs = _calls(model, cache, 6)
    assert cache.skipped == 0
    for i, out in enumerate(outputs):
        assert torch.equal(out, stock(model, forward_inputs(1, sigma=1 - i / 6)))


def test_teacache_skips_between_the_first_and_last_call_with_the_cached_residual():
    model = tiny_transformer()
    cache = TeaCache(threshold=1.0)
    cache.reset(6)
    ran = []
    model.transformer_blocks[1].register_forward_pre_hook(lambda *_: ran.append(cache.calls_total - 1))
    outputs = _calls(model, cache, 6)
    assert cache.skipped >= 2 and cache.skipped_total == cache.skipped
    assert ran[0] == 0 and ran[-1] == 5  # the first and the last call of a section always run
    assert len(ran) == 6 - cache.skipped
    assert all(torch.isfinite(o).all() for o in outputs)
    skipped_out = outputs[next(i for i in range(6) if i not in ran)]
    assert not torch.equal(skipped_out, stock(model, forward_inputs(1, sigma=1 - ran[1] / 6)))


def test_teacache_render_below_threshold_is_the_plain_video_and_above_it_differs(original_models, tmp_path):
    plain = render(original_models, make_picture(), RenderRequest(**TINY, seconds=1.2), tmp_path / "p",
                   tmp_path / "p.mp4")
    tiny_threshold = render(original_models, make_picture(), RenderRequest(**TINY, seconds=1.2, teacache=0.01),
                            tmp_path / "t", tmp_path / "t.mp4")
    skipping = render(original_models, make_picture(), RenderRequest(**TINY, seconds=1.2, teacache=1.0),
                      tmp_path / "s", tmp_path / "s.mp4")
    assert np.array_equal(video_frames(plain.video), video_frames(tiny_threshold.video))
    assert skipping.frames == plain.frames
    assert not np.array_equal(video_frames(plain.video), video_frames(skipping.video))


def test_teacache_threshold_is_checked_and_off_keeps_the_old_fingerprint():
    from engine.direction import Guides
    from engine.render import InputError, _fingerprint

    with pytest.raises(InputError, match="TeaCache"):
        RenderRequest(prompt="x", teacache=1.5).checked()
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    off, on = RenderRequest(prompt="x"), RenderRequest(prompt="x", teacache=0.15)
    assert _fingerprint(off, image, Guides()) != _fingerprint(on, image, Guides())
    # Jobs checkpointed before the option existed still resume: "off" leaves the fingerprint as it was.
    import hashlib
    import json
    from dataclasses import asdict

    old = asdict(off)
    for later_option in ("teacache", "end_strength", "loop", "loras"):  # options added since, all off here
        del old[later_option]
    digest = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode())
    digest.update(image.tobytes())
    digest.update(str(image.shape).encode())
    assert _fingerprint(off, image, Guides()) == digest.hexdigest()  # and without guides


def test_teacache_pause_mid_section_resumes_to_the_same_video(original_models, tmp_path):
    request = RenderRequest(**TINY, seconds=2.4, seed=9, teacache=1.0)  # 2 sections
    picture = make_picture()
    whole = render(original_models, picture, request, tmp_path / "whole", tmp_path / "whole.mp4")
    seen = []
    with pytest.raises(Paused):
        render(original_models, picture, request, tmp_path / "job", tmp_path / "job.mp4",
               on_step=lambda e: seen.append((e.section, e.step)), should_pause=lambda: (2, 2) in seen)
    saved = torch.load(tmp_path / "job" / "checkpoint.pt", weights_only=False)
    assert saved["partial"]["teacache"]["count"] == 2
    resumed = render(original_models, picture, request, tmp_path / "job", tmp_path / "job.mp4")
    assert np.array_equal(video_frames(resumed.video), video_frames(whole.video))


def test_float8_linear_is_close_to_the_bf16_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    fp8 = Float8Linear(linear)
    x = torch.randn(2, 10, 64).to(torch.bfloat16)
    out = fp8(x)
    assert out.shape == (2, 10, 48) and out.dtype == torch.bfloat16
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)
    with torch.no_grad():
        assert _rel(out, linear(x)) < 0.05
    assert fp8_supported(torch.device("cpu"))


def test_fp8_blocks_keep_the_modulation_exact_and_stay_close():
    model = tiny_transformer(dual=2, single=2)
    reference = stock(model, forward_inputs())
    swapped = quantize_blocks_fp8(model)
    # Dual block: q k v out, added q k v out, ff in/out, ff_context in/out = 12; single: q k v, mlp, out = 5.
    assert swapped == 2 * 12 + 2 * 5
    for block in repeated_blocks(model):
        norm = block.norm1 if hasattr(block, "norm1") else block.norm
        assert type(norm.linear) is torch.nn.Linear
    out = stock(model, forward_inputs())
    assert 0 < _rel(out, reference) < 0.05


def test_float8_stored_linear_widens_its_weight_and_stays_close():
    """For GPUs without FP8 tensor cores: e4m3 storage, products in the input's dtype."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    stored = Float8StoredLinear(linear)
    assert stored.weight.dtype == torch.float8_e4m3fn and stored.weight_scale.shape == (48, 1)
    x = torch.randn(2, 10, 64).to(torch.bfloat16)
    widened = (stored.weight.float() * stored.weight_scale).to(torch.bfloat16)
    assert torch.equal(stored(x), torch.nn.functional.linear(x, widened, linear.bias))
    with torch.no_grad():
        assert 0 < _rel(stored(x), linear(x)) < 0.05


def test_fp8_storage_halves_the_streamed_blocks_and_stays_close():
    """Weight-only FP8 blocks stream about half the bytes (the modulation linears stay exact) and give an
    output close to bf16's; the figure is printed for the record."""
    model = tiny_transformer(dual=2, single=2)
    reference = stock(model, forward_inputs())
    whole = sum(p.nbytes for p in BlockStreamer(tiny_transformer(dual=2, single=2),
                                                repeated_blocks(tiny_transformer(dual=2, single=2)), pin=False).packed)
    linears = [m for b in repeated_blocks(model) for n, m in b.named_modules()
               if type(m) is torch.nn.Linear and not n.startswith("norm")]
    swapped_bytes = sum(m.weight.nbytes for m in linears)  # bf16 weights, to be one byte a weight plus a scale
    assert quantize_blocks_fp8(model, compute=False) == 2 * 12 + 2 * 5 == len(linears)
    assert not any(isinstance(m, Float8Linear) for m in model.modules())
    for block in repeated_blocks(model):
        norm = block.norm1 if hasattr(block, "norm1") else block.norm
        assert type(norm.linear) is torch.nn.Linear
    streamer = BlockStreamer(model, repeated_blocks(model), pin=False)
    stored = sum(p.nbytes for p in streamer.packed)
    assert stored < whole - 0.4 * swapped_bytes  # their half saved, less the scales (large in a tiny model)
    streamer.attach("cpu")
    error = _rel(stock(model, forward_inputs()), reference)
    print(f"FP8 storage: blocks {stored} bytes against {whole}; output rel L2 {error:.4f}")
    assert 0 < error < 0.05


def test_the_compiled_vae_decoder_decodes_as_before(original_models):
    """The decoder compiled (Dynamo's eager backend here: no compiler on the CPU) gives the same pixels."""
    import copy

    from engine.speed import compile_vae_decoder
    from engine.stitch import vae_decode

    vae = copy.deepcopy(original_models.encoders.vae)
    window = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = vae_decode(window, vae)
    assert compile_vae_decoder(vae, backend="eager") and not compile_vae_decoder(vae, backend="eager")
    assert torch.equal(vae_decode(window, vae), expected)


def test_regional_compile_keeps_the_output_and_the_streamer_hooks():
    model = tiny_transformer()
    reference = stock(model, forward_inputs())
    assert compile_blocks(model, backend="eager") == 6
    assert all(b._framepack_compiled for b in repeated_blocks(model))
    assert torch.equal(stock(model, forward_inputs()), reference)
    streamer = BlockStreamer(model, repeated_blocks(model), pin=False)
    streamer.attach("cpu")
    assert torch.equal(stock(model, forward_inputs()), reference)
    assert streamer.copies > 1  # the hooks ran around the compiled forwards
    streamer.close()
    uncompile_blocks(model)
    assert "forward" not in vars(repeated_blocks(model)[0])


def test_attention_kernel_choice():
    model = tiny_transformer(dual=1, single=1)
    set_block_attention(model, "cudnn")
    assert all(str(b.attn.processor._attention_backend.value) == "_native_cudnn" for b in repeated_blocks(model))
    set_block_attention(model, "sdpa")
    assert all(b.attn.processor._attention_backend is None for b in repeated_blocks(model))
    assert set(ATTENTION_BACKENDS) >= {"sdpa", "cudnn", "flash"}
    with pytest.raises(ValueError, match="Unknown attention"):
        set_block_attention(model, "sage")


def _animate(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "engine.cli", "animate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_animate_takes_the_memory_and_speed_flags(tiny_models_dir, tmp_path):
    from engine.video import probe

    picture = tmp_path / "photo.png"
    make_picture(120, 90).save(picture)
    out = tmp_path / "v.mp4"
    result = _animate([str(picture), "waves", "--seconds", "1.2", "--steps", "3", "--out", str(out),
                       "--models", str(tiny_models_dir), "--device", "cpu", "--resolution", "64",
                       "--memory-mode", "low", "--teacache", "0.5", "--fp8", "--no-compile"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert probe(out).frames == 37
    refused = _animate([str(picture), "waves", "--teacache", "2"], tmp_path)
    assert refused.returncode == 2 and "TeaCache threshold" in refused.stderr


def test_the_speed_benchmark_runs_its_stages_on_the_tiny_model(tmp_path):
    """benchmarks/speed_modes.py --tiny: the GPU benchmark's plumbing on the CPU, so it cannot rot unseen."""
    import json

    out = tmp_path / "speed.jsonl"
    subprocess.run([sys.executable, "-m", "benchmarks.speed_modes", "--tiny", "--out", str(out),
                    "--only", "stock,fast,graphed,fast_fa3", "--repeats", "2"], check=True, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    records = {r["mode"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["stock"]["s_per_step"] > 0 and records["fast"]["max_abs_diff"] == 0.0
    assert records["graphed"]["bit_identical_to_ungraphed"] and records["graphed"]["replays"] == 0  # no CUDA here
    assert "FlashAttention-3 is unavailable: it needs an NVIDIA GPU" in records["fast_fa3"]["error"]
