"""The AdaLN modulation worked out once per section (engine/modulation.py): the same outputs as the blocks'
own linears, streamed blocks without those weights, a clear failure for a call it was not prepared for."""

from __future__ import annotations

import pytest
import torch
from engine_inputs import forward_inputs, stock, tiny_transformer

from engine.denoiser import Conditioning, Guidance, embedding_inputs
from engine.memory_plan import sizes_from_folders, sizes_of_modules
from engine.modulation import (
    PrecomputedModulation,
    adaln_layers,
    check_section,
    precompute_modulation,
    prepare_section,
    restore_modulation,
)
from engine.offload import BlockStreamer
from engine.packed_forward import BlockLoopTransformer, run_all_blocks
from engine.speed import repeated_blocks

SIGMAS = torch.tensor([0.9, 0.6, 0.3, 0.0])


def _inputs_at(sigma: float, pooled: torch.Tensor) -> dict:
    return {**forward_inputs(sigma=sigma), "pooled_projections": pooled}


def _prompts() -> tuple[Conditioning, Conditioning]:
    inputs = forward_inputs()

    def prompt(pooled):
        return Conditioning(inputs["encoder_hidden_states"], inputs["encoder_attention_mask"], pooled,
                            inputs["image_embeds"])

    return prompt(inputs["pooled_projections"]), prompt(-inputs["pooled_projections"])


def test_precomputed_rows_give_the_blocks_own_output_for_every_call_of_a_section():
    """With true CFG: every step's call for both prompts, through the stock forward and the packed one,
    bit for bit as the model with its linears in place."""
    positive, negative = _prompts()
    reference_model, model = tiny_transformer(), tiny_transformer()
    moved = precompute_modulation(model, repeated_blocks(model))
    assert moved == sum(p.numel() * 2 for n in adaln_layers(repeated_blocks(reference_model))
                        for p in n.linear.parameters())
    guidance = Guidance(cfg=3.0)
    calls = embedding_inputs(positive, negative, guidance, SIGMAS, torch.bfloat16)
    assert len(calls) == 2 * (len(SIGMAS) - 1)
    prepare_section(model, calls)
    packed = BlockLoopTransformer(model, run_all_blocks)
    for sigma in SIGMAS[:-1].tolist():
        for prompt in (positive, negative):
            inputs = _inputs_at(sigma, prompt.pooled)
            expected = stock(reference_model, inputs)
            assert torch.equal(stock(model, inputs), expected)
            with torch.no_grad():
                assert torch.equal(packed(**inputs)[0], expected)
    check_section(model)  # every call found its rows


def test_a_call_the_section_was_not_prepared_for_is_reported():
    positive, _ = _prompts()
    model = tiny_transformer()
    precompute_modulation(model, repeated_blocks(model))
    prepare_section(model, embedding_inputs(positive, None, Guidance(), SIGMAS, torch.bfloat16))
    stock(model, _inputs_at(0.45, positive.pooled))  # a timestep the section does not have
    with pytest.raises(RuntimeError, match="1 model calls"):
        check_section(model)


def test_a_call_before_any_section_is_refused_clearly():
    model = tiny_transformer()
    precompute_modulation(model, repeated_blocks(model))
    with pytest.raises(RuntimeError, match="prepare_section"):
        stock(model, forward_inputs())


def test_streamed_blocks_leave_the_modulation_weights_at_home_and_restore_puts_them_back():
    reference = stock(tiny_transformer(dual=2, single=2), forward_inputs())
    model = tiny_transformer(dual=2, single=2)
    whole = [sum(t.numel() * t.element_size() for t in b.state_dict().values()) for b in repeated_blocks(model)]
    names = dict(model.named_parameters())
    moved = precompute_modulation(model, repeated_blocks(model))
    assert precompute_modulation(model, repeated_blocks(model)) == 0  # once only
    streamer = BlockStreamer(model, repeated_blocks(model), slots=2, ahead=1, pin=False)
    packed = sum(p.nbytes for p in streamer.packed)
    assert sum(whole) - moved <= packed < sum(whole) - moved + 1024  # the blocks less the linears, plus alignment
    streamer.attach("cpu")
    positive, _ = _prompts()
    prepare_section(model, embedding_inputs(positive, None, Guidance(), torch.tensor([0.9, 0.0]), torch.bfloat16))
    assert torch.equal(stock(model, forward_inputs()), reference)
    streamer.close()
    restore_modulation(model)
    assert not any(isinstance(m, PrecomputedModulation) for m in model.modules())
    assert dict(model.named_parameters()).keys() == names.keys()
    assert torch.equal(stock(model, forward_inputs()), reference)  # the plain model, with no section prepared


def test_checkpoint_sizes_count_each_blocks_modulation_from_the_headers(tiny_models_dir):
    """The planner's figure for each block's modulation, read from the files' headers and the transformer's
    config, is the bytes of the linears that precompute_modulation takes out of the loaded model."""
    from engine.models import HUNYUAN_REPO, REDUX_REPO, TRANSFORMER_REPOS, load_encoders, load_transformer
    from engine.sections import Variant

    root, hunyuan, redux = (tiny_models_dir / TRANSFORMER_REPOS[Variant.parse("original")],
                            tiny_models_dir / HUNYUAN_REPO, tiny_models_dir / REDUX_REPO)
    sizes = sizes_from_folders(root, hunyuan, redux)
    transformer = load_transformer("original", torch.device("cpu"), tiny_models_dir, False, torch.device("cpu"))
    blocks = repeated_blocks(transformer)
    expected = tuple(sum(t.numel() * 2 for n in adaln_layers([b]) for t in n.linear.parameters()) for b in blocks)
    assert sizes.modulation == expected and all(expected)
    assert sizes.lean_blocks == tuple(b - m for b, m in zip(sizes.blocks, expected, strict=True))
    in_memory = sizes_of_modules(load_encoders(torch.device("cpu"), tiny_models_dir, False), transformer, blocks)
    assert in_memory.modulation == expected
