"""Directing the motion on the tiny models: end frame, keyframes, timed prompts, loops, true CFG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_picture
from helpers import video_frames

import engine.section_sampler as section_sampler
from engine import direction
from engine.render import Paused, RenderRequest, render
from engine.sections import Variant
from storage.inputs import InputError

TINY = dict(prompt="a cat dances", steps=3, resolution=64, seconds=2.4)  # two sections


def _render(models, tmp: Path, name: str, picture=None, **kwargs):
    options = {k: kwargs.pop(k) for k in ("end_image", "keyframes") if k in kwargs}
    request = RenderRequest(**{**TINY, "variant": models.variant, **kwargs})
    return render(models, picture or make_picture(), request, tmp / f"{name}_work", tmp / f"{name}.mp4", **options)


def _section_latents(tmp: Path, name: str, index: int) -> torch.Tensor:
    return torch.load(tmp / f"{name}_work" / f"latents_{index + 1:04d}.pt", weights_only=False)["generated"]


# Timed prompts: parsing and the sections they land on (no model).

def test_a_plain_prompt_with_brackets_stays_plain():
    assert direction.parse_timed_prompt("a cat [very cute] sits", 5.0) is None
    assert RenderRequest(prompt="a cat [very cute] sits").checked().timed_prompts() is None


def test_timed_prompts_start_at_the_nearest_section_and_blend_for_one_section():
    timed = direction.parse_timed_prompt("[0s: a cat sits] [2.4s: the cat jumps] [4.9s: it lands]", 6.0)
    in_time = direction.section_prompts(timed, 5, 9, Variant.F1)  # F1: generation order is time order
    assert [(p.text, p.previous, p.weight) for p in in_time] == [
        ("a cat sits", None, 1.0), ("a cat sits", None, 1.0),
        ("the cat jumps", "a cat sits", 0.5), ("the cat jumps", None, 1.0),
        ("it lands", "the cat jumps", 0.5),
    ]
    assert direction.section_prompts(timed, 5, 9, Variant.ORIGINAL) == in_time[::-1]  # generated end first


def test_a_range_and_a_late_first_prompt_are_understood():
    timed = direction.parse_timed_prompt("[1s-2s: waves] [2.4s: smiles]", 3.6)
    assert [(t.start, t.end, t.text) for t in timed] == [(1.0, 2.0, "waves"), (2.4, None, "smiles")]
    assert [p.text for p in direction.section_prompts(timed, 3, 9, Variant.F1)] == ["waves", "waves", "smiles"]


@pytest.mark.parametrize(("prompt", "message"), [
    ("[0s: sits] [6s: jumps]", "after the video ends"),
    ("[0s: sits] [3s: jumps] [2s: lands]", "time order"),
    ("[0s: sits] [3s: jumps] [3s: lands]", "time order"),
    ("[0s-3s: sits] [2s: jumps]", "overlap"),
    ("[0s-9s: sits]", "by the end of the video"),
    ("a cat [0s: sits] [2s: jumps]", "outside"),
    ("[0s: sits] [2s:  ]", "empty"),
    ("[0s: sits] [0.2s: jumps]", "too close to the one before"),
    ("[0s: sits] [4.7s: jumps]", "too close to the end"),
])
def test_bad_timed_prompts_are_refused_with_a_reason(prompt, message):
    with pytest.raises(InputError, match=message):
        RenderRequest(prompt=prompt, seconds=4.8).checked()


@pytest.mark.parametrize(("changes", "message"), [
    (dict(cfg=0.5), "CFG must be between 1"), (dict(cfg=33), "CFG must be between 1"),
    (dict(cfg_rescale=1.5), "rescale"), (dict(end_strength=0), "strength"), (dict(end_strength=1.5), "strength"),
    (dict(loop=True, variant="f1"), "original variant"),
])
def test_bad_options_are_refused(changes, message):
    with pytest.raises(InputError, match=message):
        RenderRequest(prompt="a cat", **changes).checked()


# The end frame.

def test_the_end_frame_conditions_the_first_generated_section(original_models, tmp_path):
    _render(original_models, tmp_path, "plain")
    _render(original_models, tmp_path, "plain_again")
    _render(original_models, tmp_path, "end_a", end_image=make_picture(seed=1))
    _render(original_models, tmp_path, "end_b", end_image=make_picture(seed=2))
    _render(original_models, tmp_path, "end_a_weak", end_image=make_picture(seed=1), end_strength=0.5)
    first = {name: _section_latents(tmp_path, name, 0)
             for name in ("plain", "plain_again", "end_a", "end_b", "end_a_weak")}
    assert torch.equal(first["plain"], first["plain_again"])  # without an end picture: nothing changes
    for a, b in [("plain", "end_a"), ("end_a", "end_b"), ("end_a", "end_a_weak")]:
        assert not torch.allclose(first[a], first[b]), (a, b)


def test_the_end_latent_sits_in_the_slot_after_the_first_window(original_models):
    request = RenderRequest(**TINY, end_strength=0.25).checked()
    start = np.array(make_picture(64, 64))
    end = np.array(make_picture(64, 64, seed=5))
    conditioning = section_sampler.encode_conditioning(original_models, start, request, direction.Guides(end=end))
    sampler = section_sampler.SectionSampler(original_models, request, conditioning)
    assert torch.equal(sampler.history[:, :, :1], conditioning.end_latent * 0.25)
    assert not sampler.history[:, :, 1:].any()
    context = sampler._context(0)
    assert torch.equal(context.clean[:, :, 1:].float(), (conditioning.end_latent * 0.25).to(context.clean).float())


def test_the_end_picture_is_cropped_to_the_start_pictures_bucket(original_models, tmp_path):
    _render(original_models, tmp_path, "job", end_image=make_picture(50, 120, seed=3))
    work = tmp_path / "job_work"
    from PIL import Image

    assert Image.open(work / "end.png").size == Image.open(work / "input.png").size


# Keyframes.

def test_a_keyframe_conditions_the_sections_up_to_its_own(original_models, tmp_path):
    assert direction.keyframe_sections([1.5], 2.4, 9, Variant.ORIGINAL) == [0]  # time section 1, generated first
    _render(original_models, tmp_path, "plain")
    _render(original_models, tmp_path, "key", keyframes=[(1.5, make_picture(seed=4))])
    assert not torch.allclose(_section_latents(tmp_path, "plain", 0), _section_latents(tmp_path, "key", 0))
    assert (tmp_path / "key_work" / "keyframe_0001.png").is_file()


def test_eichis_rule_picks_the_nearest_keyed_section_at_or_after():
    keyed = {1: "k1", 3: "k3"}
    assert [direction.keyframe_for(keyed, i) for i in range(5)] == ["k1", "k1", "k3", "k3", None]


@pytest.mark.parametrize(("keyframes", "end", "variant", "message"), [
    ([(3.0, None)], False, "original", "outside the video"),
    ([(0.0, None)], False, "original", "outside the video"),
    ([(0.2, None), (0.5, None)], False, "original", "same section"),
    ([(1.0, None)], False, "f1", "original variant"),
    ([], True, "f1", "original variant"),
    ([(1.0, "not a picture")], False, "original", "must be a picture"),
])
def test_bad_keyframes_and_end_frames_create_nothing(models_for, tmp_path, keyframes, end, variant, message):
    keyframes = [(at, make_picture(seed=6) if picture is None else picture) for at, picture in keyframes]
    with pytest.raises(InputError, match=message):
        _render(models_for[variant], tmp_path, "job", end_image=make_picture() if end else None,
                keyframes=keyframes)
    assert not (tmp_path / "job_work").exists()


def test_a_loop_with_an_end_picture_is_refused(original_models, tmp_path):
    with pytest.raises(InputError, match="loop"):
        _render(original_models, tmp_path, "job", end_image=make_picture(), loop=True)
    assert not (tmp_path / "job_work").exists()


# Timed prompts on the models.

def test_timed_prompts_switch_at_the_right_sections_and_encode_each_once(original_models, tmp_path, monkeypatch):
    encoded, used = [], []
    real_encode, real_denoiser = section_sampler.encode_prompt, section_sampler.make_denoiser
    monkeypatch.setattr(section_sampler, "encode_prompt", lambda p, enc: encoded.append(p) or real_encode(p, enc))
    monkeypatch.setattr(section_sampler, "make_denoiser",
                        lambda model, positive, *rest: used.append(positive) or real_denoiser(model, positive, *rest))
    prompt = "[0s: a cat sits] [1.2s: the cat jumps] [2.4s: a cat sits]"
    _render(original_models, tmp_path, "timed", prompt=prompt, seconds=3.6)
    assert sorted(encoded) == ["a cat sits", "the cat jumps"]  # each distinct prompt once
    sits, jumps = (section_sampler.encode_prompts(original_models, [p])[0] for p in ("a cat sits", "the cat jumps"))
    half = torch.lerp(sits[0].to(used[0].text), jumps[0].to(used[0].text), 0.5)
    # Generation order runs from the end: 2.4 s+ (sits, blended from jumps), 1.2 s+ (jumps, blended), 0 s (sits).
    assert torch.equal(used[1].text, half)
    assert torch.equal(used[2].text, sits[0].to(used[2].text))
    assert torch.equal(used[0].text, torch.lerp(jumps[0].to(half), sits[0].to(half), 0.5))


# True CFG, loops, and resuming with each feature on.

def test_a_loop_heads_for_its_own_start_picture(original_models, tmp_path):
    """The loop's end latent is exactly the start latent, and it changes the end of the video. Prints the
    first-to-last frame difference (mean absolute, 0-255) with and without the loop: on these random tiny
    weights it says nothing about the join (that needs the real model), so it is reported, not asserted."""
    plain = video_frames(_render(original_models, tmp_path, "plain", seed=5).video).astype(float)
    looped = video_frames(_render(original_models, tmp_path, "loop", seed=5, loop=True).video).astype(float)
    saved = torch.load(tmp_path / "loop_work" / "conditioning.pt", weights_only=False)
    assert torch.equal(saved["end_latent"], saved["start_latent"])
    assert not np.array_equal(plain[-1], looped[-1])
    plain_gap, loop_gap = np.abs(plain[0] - plain[-1]).mean(), np.abs(looped[0] - looped[-1]).mean()
    print(f"first vs last frame, mean abs difference: loop {loop_gap:.2f}, without {plain_gap:.2f}")


FEATURES = {
    "end frame": dict(end_image=make_picture(seed=7), end_strength=0.7),
    "keyframe": dict(keyframes=[(1.5, make_picture(seed=8))]),
    "timed prompts": dict(prompt="[0s: a cat sits] [1.2s: the cat jumps]"),
    "loop": dict(loop=True),
    "cfg and negative": dict(cfg=3.0, cfg_rescale=0.5, negative_prompt="blurry"),
}


@pytest.mark.parametrize("feature", FEATURES)
def test_pause_mid_section_and_resume_gives_the_same_video(original_models, tmp_path, feature):
    options = FEATURES[feature]
    whole = _render(original_models, tmp_path, "whole", **dict(options))
    seen = []
    with pytest.raises(Paused):
        request = RenderRequest(**{**TINY, **{k: v for k, v in options.items() if k not in ("end_image", "keyframes")}})
        extras = {k: v for k, v in options.items() if k in ("end_image", "keyframes")}
        render(original_models, make_picture(), request, tmp_path / "job_work", tmp_path / "job.mp4",
               on_step=lambda e: seen.append((e.section, e.step)), should_pause=lambda: seen[-1:] == [(2, 1)],
               **extras)
    resumed = _render(original_models, tmp_path, "job", **dict(options))
    assert resumed.resumed_from_section == 1
    assert np.array_equal(video_frames(resumed.video), video_frames(whole.video))


def test_another_end_picture_does_not_resume_the_first_ones_checkpoint(original_models, tmp_path):
    seen = []
    request = RenderRequest(**TINY)
    with pytest.raises(Paused):
        render(original_models, make_picture(), request, tmp_path / "job_work", tmp_path / "job.mp4",
               end_image=make_picture(seed=1), on_step=lambda e: seen.append(e.section),
               should_pause=lambda: seen[-1:] == [2])
    other = _render(original_models, tmp_path, "job", end_image=make_picture(seed=2))
    assert other.resumed_from_section == 0
