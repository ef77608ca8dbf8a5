"""Prompt embeddings from the cache: a re-roll skips Llama and CLIP and gives the same video; other
encoders or another prompt miss the cache."""

from __future__ import annotations

import numpy as np
import torch
from conftest import make_picture
from helpers import video_frames

from engine.engine_options import EngineOptions
from engine.models import load_models
from engine.prompt_cache import PromptCache, encoders_identity
from engine.render import RenderRequest, render


def _count_calls(module) -> list:
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_a_reroll_skips_the_text_encoders_and_gives_the_same_video(tiny_models_dir, tmp_path):
    models = load_models("original", "cpu", tiny_models_dir, options=EngineOptions(cache_dir=tmp_path / "cache"))
    llama, clip = _count_calls(models.encoders.text_encoder), _count_calls(models.encoders.text_encoder_2)
    request = RenderRequest(prompt="a cat dances", seconds=1.2, steps=2, resolution=64, seed=3)
    first = render(models, make_picture(), request, tmp_path / "a", tmp_path / "a.mp4")
    assert (len(llama), len(clip)) == (1, 1) and models.prompt_cache.misses == 1
    reroll = RenderRequest(**{**request.__dict__, "seed": 4})
    render(models, make_picture(), reroll, tmp_path / "b", tmp_path / "b.mp4")
    again = render(models, make_picture(), request, tmp_path / "c", tmp_path / "c.mp4")
    assert (len(llama), len(clip)) == (1, 1) and models.prompt_cache.hits == 2
    assert np.array_equal(video_frames(first.video), video_frames(again.video))
    render(models, make_picture(), RenderRequest(**{**request.__dict__, "prompt": "a dog runs"}), tmp_path / "d",
           tmp_path / "d.mp4")
    assert len(llama) == 2  # another prompt is encoded


def test_true_cfg_caches_the_negative_prompt_too(tiny_models_dir, tmp_path):
    models = load_models("f1", "cpu", tiny_models_dir, options=EngineOptions(cache_dir=tmp_path / "cache"))
    llama = _count_calls(models.encoders.text_encoder)
    request = RenderRequest(prompt="rain falls", negative_prompt="blurry", cfg=2.0, seconds=1.2, steps=2,
                            resolution=64, variant="f1")
    render(models, make_picture(), request, tmp_path / "a", tmp_path / "a.mp4")
    render(models, make_picture(), request, tmp_path / "b", tmp_path / "b.mp4")
    assert len(llama) == 2  # the prompt and the negative once each, then neither


def test_other_encoders_miss_the_cache(original_models, tmp_path):
    encoders = original_models.encoders
    identity = encoders_identity(encoders)
    cache = PromptCache(tmp_path, identity)
    text, mask, pooled = torch.ones(1, 512, 4), torch.ones(1, 512, dtype=torch.bool), torch.zeros(1, 4)
    cache.put("a cat", text, mask, pooled)
    assert all(torch.equal(a, b) for a, b in zip(cache.get("a cat"), (text, mask, pooled), strict=True))
    source = encoders.text_encoder._framepack_source
    try:
        encoders.text_encoder._framepack_source = source + "|new weights"
        assert PromptCache(tmp_path, encoders_identity(encoders)).get("a cat") is None
    finally:
        encoders.text_encoder._framepack_source = source
    assert PromptCache(tmp_path, identity).get("a cat ") is None  # the exact text is the key
    (next(tmp_path.rglob("*.safetensors"))).write_bytes(b"torn")
    assert cache.get("a cat") is None  # a torn file is a miss, not an error
