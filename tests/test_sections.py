"""Section arithmetic, index layouts and the streaming overlap blend, against SPEC.md sections 3 to 5 and 7."""

from __future__ import annotations

import pytest
import torch

from engine import sections as sec
from engine.stitch import OverlapStitcher, chunk_latents


def test_section_count_matches_spec_examples():
    assert sec.section_count(5) == 4
    assert sec.section_count(60) == 50
    assert sec.section_count(120) == 100
    assert sec.section_count(1) == 1
    assert sec.section_count(0.5) == 1  # never zero sections


@pytest.mark.parametrize("tenths", range(10, 1201))
def test_section_and_frame_arithmetic_for_every_duration(tenths):
    seconds = tenths / 10
    n = sec.section_count(seconds)
    assert n == max(round(seconds * 30 / 36), 1)
    assert sec.total_frames(n) == 36 * n + 1
    for variant in sec.Variant:
        lengths = sec.frames_after_each_section(variant, n)
        assert lengths[-1] == sec.total_frames(n)
        assert len(sec.section_layouts(variant, n)) == n


def test_video_length_after_each_section():
    assert sec.frames_after_each_section(sec.Variant.ORIGINAL, 4) == [33, 69, 105, 145]
    assert sec.frames_after_each_section(sec.Variant.F1, 4) == [37, 73, 109, 145]


def test_inverted_paddings():
    assert sec.inverted_paddings(1) == [0]
    assert sec.inverted_paddings(4) == [3, 2, 1, 0]
    assert sec.inverted_paddings(5) == [3, 2, 2, 1, 0]
    assert sec.inverted_paddings(8) == [3, 2, 2, 2, 2, 2, 1, 0]
    for n in range(1, 101):
        paddings = sec.inverted_paddings(n)
        assert len(paddings) == n and paddings[-1] == 0 and paddings.count(0) == 1


def _list(t: torch.Tensor) -> list[int]:
    assert t.ndim == 1  # diffusers wants 1-D index tensors
    return t.tolist()


def test_inverted_layouts_match_spec_examples():
    p3 = sec.inverted_layout(3)
    assert _list(p3.noisy) == list(range(28, 37))
    assert _list(p3.clean) == [0, 37]
    assert _list(p3.history_2x) == [38, 39]
    assert _list(p3.history_4x) == list(range(40, 56))
    assert not p3.is_last
    p0 = sec.inverted_layout(0)
    assert _list(p0.noisy) == list(range(1, 10))
    assert _list(p0.clean) == [0, 10]
    assert _list(p0.history_2x) == [11, 12]
    assert _list(p0.history_4x) == list(range(13, 29))
    assert p0.is_last


def test_f1_layout_matches_spec():
    layout = sec.f1_layout()
    assert _list(layout.clean) == [0, 19]
    assert _list(layout.history_4x) == list(range(1, 17))
    assert _list(layout.history_2x) == [17, 18]
    assert _list(layout.noisy) == list(range(20, 29))
    layouts = sec.section_layouts(sec.Variant.F1, 3)
    assert [x.is_last for x in layouts] == [False, False, True]


def _labelled_start() -> torch.Tensor:
    return torch.full((1, 1, 1, 1, 1), -1.0)


def _section(value: float, window: int = 9) -> torch.Tensor:
    return torch.full((1, 1, window, 1, 1), value)


def test_inverted_history_inputs_follow_generation():
    start = _labelled_start()
    history = sec.initial_history(sec.Variant.ORIGINAL, start)
    clean, x2, x4 = sec.history_inputs(sec.Variant.ORIGINAL, history, start)
    # First section: start plus zeros everywhere, unmasked.
    assert clean[0, 0, :, 0, 0].tolist() == [-1.0, 0.0]
    assert x2.abs().sum() == 0 and x4.abs().sum() == 0 and x4.shape[2] == 16
    history, added = sec.extend_history(sec.Variant.ORIGINAL, history, _section(1.0), start, is_last=False)
    clean, x2, x4 = sec.history_inputs(sec.Variant.ORIGINAL, history, start)
    assert clean[0, 0, :, 0, 0].tolist() == [-1.0, 1.0]
    assert x2[0, 0, :, 0, 0].tolist() == [1.0, 1.0]
    assert x4[0, 0, :, 0, 0].tolist() == [1.0] * 6 + [0.0] * 10
    history, added = sec.extend_history(sec.Variant.ORIGINAL, history, _section(2.0), start, is_last=True)
    assert added.shape[2] == 10 and added[0, 0, 0, 0, 0] == -1.0  # the start image is prepended at the end
    assert history[0, 0, :, 0, 0].tolist()[:19] == [-1.0] + [2.0] * 9 + [1.0] * 9


def test_f1_history_inputs_follow_generation():
    start = _labelled_start()
    history = sec.initial_history(sec.Variant.F1, start)
    assert history.shape[2] == 20
    clean, x2, x4 = sec.history_inputs(sec.Variant.F1, history, start)
    assert clean[0, 0, :, 0, 0].tolist() == [-1.0, -1.0]  # 1x is the start latent in section 1
    assert x2.abs().sum() == 0 and x4.abs().sum() == 0
    history, _ = sec.extend_history(sec.Variant.F1, history, _section(1.0), start, is_last=False)
    clean, x2, x4 = sec.history_inputs(sec.Variant.F1, history, start)
    assert clean[0, 0, :, 0, 0].tolist() == [-1.0, 1.0]
    assert x2[0, 0, :, 0, 0].tolist() == [1.0, 1.0]
    assert x4[0, 0, :, 0, 0].tolist() == [0.0] * 9 + [-1.0] + [1.0] * 6  # old zeros stay until replaced


def _official_soft_append(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """SPEC.md soft_append(A, B, k) on (3, T, H, W), written independently as the reference."""
    w = torch.linspace(1, 0, k, dtype=a.dtype).view(1, -1, 1, 1)
    return torch.cat([a[:, :-k], w * a[:, -k:] + (1 - w) * b[:, :k], b[:, k:]], dim=1)


def _official_chain(variant: sec.Variant, chunks: list[torch.Tensor], k: int) -> torch.Tensor:
    pixels = chunks[0]
    for chunk in chunks[1:]:
        if variant is sec.Variant.F1:
            pixels = _official_soft_append(pixels, chunk, k)
        else:
            pixels = _official_soft_append(chunk, pixels, k)
    return pixels


@pytest.mark.parametrize("variant", list(sec.Variant))
@pytest.mark.parametrize("sections", [1, 2, 3, 4, 5, 9])
def test_streaming_stitch_equals_the_official_whole_video_blend(variant, sections):
    window, k = 9, sec.overlap_frames(9)
    gen = torch.Generator().manual_seed(sections)
    chunks = []
    for index in range(sections):
        if variant is sec.Variant.F1:
            latents = window + 1 if index == 0 else 2 * window
        else:
            latents = (window if index == 0 else 2 * window) + (1 if index == sections - 1 else 0)
        chunks.append(torch.randn((3, 4 * latents - 3, 2, 2), generator=gen).to(torch.float16))
    expected = _official_chain(variant, chunks, k)

    stitcher = OverlapStitcher(k, reverse=variant is sec.Variant.ORIGINAL, sections=sections)
    blocks = [stitcher.add(c) for c in chunks] + [stitcher.finish()]
    assert len({rank for rank, _ in blocks}) == len(blocks)
    video = torch.cat([block for _, block in sorted(blocks, key=lambda rb: rb[0])], dim=1)
    assert video.shape[1] == sec.total_frames(sections) == expected.shape[1]
    assert torch.equal(video, expected)


def test_stitcher_resume_matches_uninterrupted():
    k = 33
    chunks = [torch.randn((3, n, 1, 1)).half() for n in (33, 69, 69, 73)]
    whole = OverlapStitcher(k, True, 4)
    expected = [whole.add(c) for c in chunks] + [whole.finish()]
    resumed = OverlapStitcher(k, True, 4)
    first = [resumed.add(c) for c in chunks[:2]]
    again = OverlapStitcher(k, True, 4)
    again.restore(chunks[1], added=2)
    rest = [again.add(c) for c in chunks[2:]] + [again.finish()]
    for (r1, b1), (r2, b2) in zip(expected, first + rest, strict=True):
        assert r1 == r2 and torch.equal(b1, b2)


@pytest.mark.parametrize("sections", [1, 2, 4])
def test_chunk_latents_pick_what_the_demos_decode(sections):
    window = 9
    start = _labelled_start()
    for variant in sec.Variant:
        history = sec.initial_history(variant, start)
        for index, layout in enumerate(sec.section_layouts(variant, sections, window)):
            history, _ = sec.extend_history(variant, history, _section(float(index + 1)), start, layout.is_last)
            picked = chunk_latents(variant, history, index, sections, window)[0, 0, :, 0, 0].tolist()
            if variant is sec.Variant.F1:
                expected = ([-1.0] + [1.0] * 9) if index == 0 else [float(index)] * 9 + [float(index + 1)] * 9
            else:
                head = [-1.0] if layout.is_last else []
                expected = head + [float(index + 1)] * 9 + ([float(index)] * 9 if index > 0 else [])
            assert picked == expected
            history = sec.trim_history(variant, history, 19)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="Unknown variant"):
        sec.Variant.parse("f2")
    assert sec.Variant.parse("F1") is sec.Variant.F1
