"""Low-VRAM mode on the CPU: block streaming, placement per phase, mode choice; the video stays the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_picture
from engine_inputs import forward_inputs, stock, tiny_transformer
from helpers import video_frames

from engine.engine_options import EngineOptions
from engine.memory_modes import HIGH_VRAM_FREE_BYTES, MemoryMode, Offloaded, choose_memory_mode
from engine.models import load_models
from engine.offload import BlockStreamer
from engine.render import RenderRequest, render
from engine.speed import repeated_blocks
from engine.text_encoding import encode_llama

CUDA = torch.device("cuda")  # only its type is read: no GPU is touched with a free-memory number given


@pytest.mark.parametrize(("free_gb", "expected"), [(79, MemoryMode.HIGH), (61, MemoryMode.HIGH),
                                                   (59, MemoryMode.LOW), (6, MemoryMode.LOW)])
def test_auto_mode_follows_free_memory(free_gb, expected):
    assert choose_memory_mode("auto", CUDA, free_bytes=free_gb * 2**30) is expected


def test_requested_mode_wins_and_nonsense_is_refused():
    assert choose_memory_mode("low", CUDA, free_bytes=80 * 2**30) is MemoryMode.LOW
    assert choose_memory_mode(" HIGH ", CUDA, free_bytes=2 * 2**30) is MemoryMode.HIGH
    assert choose_memory_mode(None, torch.device("cpu")) is MemoryMode.HIGH
    assert HIGH_VRAM_FREE_BYTES == 60 * 2**30
    with pytest.raises(ValueError, match="auto, high or low"):
        choose_memory_mode("medium", CUDA, free_bytes=0)


def test_settings_reach_the_engine_options(monkeypatch):
    from storage.settings import Settings

    for name in ("ENGINE_MEMORY_MODE", "ENGINE_FP8", "ENGINE_COMPILE", "ENGINE_TEACACHE", "ENGINE_STREAM_SLOTS"):
        monkeypatch.delenv(name, raising=False)
    assert EngineOptions.from_settings(Settings(_env_file=None)) == EngineOptions()
    monkeypatch.setenv("ENGINE_MEMORY_MODE", "low")
    monkeypatch.setenv("ENGINE_FP8", "true")
    monkeypatch.setenv("ENGINE_COMPILE", "false")
    monkeypatch.setenv("ENGINE_TEACACHE", "0.15")
    monkeypatch.setenv("ENGINE_STREAM_SLOTS", "3")
    settings = Settings()
    options = EngineOptions.from_settings(settings)
    assert options == EngineOptions(memory_mode="low", compile=False, attention="auto", fp8=True, stream_slots=3)
    assert settings.engine_teacache == 0.15


def test_streamed_blocks_give_the_same_output_from_two_shared_slots():
    plain = tiny_transformer(dual=3, single=3)
    reference = stock(plain, forward_inputs())
    model = tiny_transformer(dual=3, single=3)
    streamer = BlockStreamer(model, repeated_blocks(model), slots=2, ahead=1, pin=False)
    assert streamer.kind_of == [0, 0, 0, 1, 1, 1]  # dual and single blocks are two kinds

    streamer.attach("cpu")
    blocks = repeated_blocks(model)
    slot_of_first_weight = {b.norm1.linear.weight.data_ptr() for b in blocks[:3]}
    assert len(slot_of_first_weight) == 2  # three dual blocks, two slots: memory is bounded
    for _ in range(3):  # steady state: the last block prefetches the first for the next call
        assert torch.equal(stock(model, forward_inputs()), reference)
    # First call 7 (attach, 5 more blocks, the wrap-around prefetch), then 4 a call: blocks that have a
    # slot to themselves (d1, s1) stay, the two that share slot 0 with another block move every call.
    assert streamer.copies == 7 + 4 + 4

    streamer.detach()
    assert all(p.device.type == "cpu" for p in model.parameters())
    with pytest.raises(RuntimeError, match="attach"):
        stock(model, forward_inputs())
    streamer.close()


def test_three_slots_prefetch_two_ahead_with_the_same_output():
    reference = stock(tiny_transformer(dual=4, single=5), forward_inputs(seed=3))
    model = tiny_transformer(dual=4, single=5)
    streamer = BlockStreamer(model, repeated_blocks(model), slots=3, ahead=2, pin=False)
    streamer.attach("cpu")
    for _ in range(2):
        assert torch.equal(stock(model, forward_inputs(seed=3)), reference)
    streamer.close()


def test_one_slot_cannot_overlap_and_is_refused():
    model = tiny_transformer(dual=1, single=1)
    with pytest.raises(ValueError, match="two slots"):
        BlockStreamer(model, repeated_blocks(model), slots=1)


def test_streamed_llama_encodes_the_same_prompt(original_models, tiny_models_dir):
    enc = original_models.encoders
    reference, mask = encode_llama("a cat dances", enc.tokenizer, enc.text_encoder)
    low = load_models("original", "cpu", tiny_models_dir, options=EngineOptions(memory_mode="low"))
    placement = low.placement
    assert isinstance(placement, Offloaded)
    with placement.text_encoders():
        streamed, streamed_mask = encode_llama("a cat dances", low.encoders.tokenizer, low.encoders.text_encoder)
    assert torch.equal(streamed, reference) and torch.equal(streamed_mask, mask)
    assert not placement.llama.attached and not placement.blocks.attached  # back in RAM after the phase


def test_low_vram_render_is_the_same_video(original_models, tiny_models_dir, tmp_path):
    request = RenderRequest(prompt="a cat dances", seconds=2.4, steps=3, resolution=64, variant="original")
    high = render(original_models, make_picture(), request, tmp_path / "hw", tmp_path / "high.mp4")
    low_models = load_models("original", "cpu", tiny_models_dir, options=EngineOptions(memory_mode="low"))
    phases = []
    placement = low_models.placement
    original_transformer = placement.transformer

    def watched():
        phases.append("transformer")
        return original_transformer()

    placement.transformer = watched
    low = render(low_models, make_picture(), request, tmp_path / "lw", tmp_path / "low.mp4")
    assert phases == ["transformer"] * request.sections
    assert np.array_equal(video_frames(high.video), video_frames(low.video))
    assert low_models.encoders.vae.use_tiling  # the low-VRAM VAE tiles (too small to matter here)


def test_worker_model_cache_builds_the_low_vram_placement(tiny_models_dir, tmp_path):
    from engine.worker import ModelCache
    from storage.settings import Settings

    settings = Settings(_env_file=None, engine_device="cpu", engine_memory_mode="low",
                        framepack_models_dir=tiny_models_dir, data_dir=tmp_path)
    cache = ModelCache(settings)
    models = cache.get("f1")
    assert cache.mode is MemoryMode.LOW and isinstance(models.placement, Offloaded)
    assert cache.get("f1").transformer is models.transformer  # prepared once, reused per job
