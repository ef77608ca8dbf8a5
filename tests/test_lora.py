"""HunyuanVideo LoRAs on the FramePack transformer (engine/lora*.py): every format gives the hand-computed
model, switching in one loaded model equals fresh loads, streamed blocks and the precomputed modulation
take them too, bad files are refused with reasons, fused equals unfused and unfuses exactly, the compiled
blocks switch without recompiling, and `--lora` works end to end."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_picture
from engine_inputs import forward_inputs, stock, tiny_transformer
from lora_files import FORMATS, attention_and_ff, diffusers_updates, original_weights, write_lora
from safetensors.torch import save_file

from engine.denoiser import Conditioning, Guidance, embedding_inputs
from engine.lora import LoraChoice, LoraError, check_lora, choices_problem, resolve_lora, use_loras
from engine.lora_apply import linear_modules, match_lora
from engine.lora_formats import LoraFile, LoraPair
from engine.modulation import precompute_modulation, prepare_section
from engine.offload import BlockStreamer
from engine.render import RenderRequest
from engine.speed import compile_blocks, repeated_blocks
from storage.video_metadata import read_made_with

STRENGTH, RANK, ALPHA = 0.8, 4, 2.0


def _choice(path: Path, strength: float = STRENGTH, sha256: str = "") -> LoraChoice:
    return LoraChoice(path.stem, str(path), sha256, strength)


def _by_hand(model, updates: dict, strength: float, scale: float):
    """A copy of `model` with W + strength * scale * up @ down merged in fp32."""
    merged = copy.deepcopy(model)
    linears = linear_modules(merged)
    with torch.no_grad():
        for path, (down, up) in updates.items():
            weight = linears[path].weight
            weight.copy_(weight.float() + strength * scale * (up.float() @ down.float()))
    return merged


def _fp32_inputs() -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in forward_inputs().items()}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_the_hand_computed_model(tmp_path, fmt):
    """In fp32, so that the comparison sees the math and not bf16's rounding: W + s * B @ A * alpha / rank
    (alpha / rank = 1 without an alpha), on every linear that has an original HunyuanVideo counterpart:
    the blocks' attention, feed-forward and AdaLN, the token refiner, the embedders, the output layer."""
    model = tiny_transformer(dual=2, single=2).float()
    path = write_lora(tmp_path / f"{fmt}.safetensors", model, fmt, RANK, ALPHA)
    reference = stock(model, _fp32_inputs())
    scale = 1.0 if fmt == "diffusers-no-alpha" else ALPHA / RANK
    expected = stock(_by_hand(model, diffusers_updates(model, original_weights(model, RANK)), STRENGTH, scale),
                     _fp32_inputs())
    use_loras(model, [_choice(path)], "cpu")
    got = stock(model, _fp32_inputs())
    assert _relative(got, expected) < 1e-5
    assert _relative(got, reference) > 0.05  # the LoRA does something


def test_every_format_of_the_same_weights_gives_the_same_output_bit_for_bit(tmp_path):
    model = tiny_transformer(dual=2, single=2)
    outputs = []
    for fmt in [f for f in FORMATS if f != "diffusers-no-alpha"]:
        use_loras(model, [_choice(write_lora(tmp_path / f"{fmt}.safetensors", model, fmt))], "cpu")
        outputs.append(stock(model, forward_inputs()))
    assert all(torch.equal(out, outputs[0]) for out in outputs)


def test_our_names_agree_with_diffusers_conversion_at_full_size():
    """The original HunyuanVideo names split and renamed as diffusers' own converter does, on the full-size
    model's shapes (built on the meta device: no memory). Left out where diffusers' converter treats lora_A
    like a weight, which scrambles the update: the final AdaLN (it swaps the halves of lora_A's rows too) and
    the token refiner's self_attn_qkv (it splits lora_A's rows in three); ours shares lora_A, splits lora_B."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers

    with torch.device("meta"):
        full = HunyuanVideoFramepackTransformer3DModel(has_image_proj=True, image_proj_dim=1152,
                                                       has_clean_x_embedder=True, guidance_embeds=True)

    def first_blocks(name: str) -> bool:
        return name.startswith(("double_blocks.0.", "single_blocks.0.", "time_in.", "vector_in.", "guidance_in.",
                                "final_layer.linear"))

    weights = original_weights(full, rank=1, only=first_blocks, dtype=torch.float32)
    original = {}
    for name, (down, up) in weights.items():
        original |= {f"diffusion_model.{name}.lora_A.weight": down, f"diffusion_model.{name}.lora_B.weight": up}
    theirs = _convert_hunyuan_video_lora_to_diffusers(dict(original))
    ours = match_lora(LoraFile(Path("full.safetensors"), "", False,
                               {name: LoraPair(down, up, None) for name, (down, up) in weights.items()}), full)
    assert not ours.unmatched and not ours.mismatched
    assert len(theirs) == 2 * len(ours.updates)
    for path, (down, up, _) in ours.updates.items():
        assert torch.equal(theirs[f"transformer.{path}.lora_A.weight"], down), path
        assert torch.equal(theirs[f"transformer.{path}.lora_B.weight"], up), path


def test_strength_zero_is_no_lora_bit_for_bit(tmp_path):
    model = tiny_transformer(dual=1, single=1)
    reference = stock(model, forward_inputs())
    use_loras(model, [_choice(write_lora(tmp_path / "a.safetensors", model), strength=0.0)], "cpu")
    assert torch.equal(stock(model, forward_inputs()), reference)
    assert not any("LoraLinear" in type(m).__name__ for m in model.modules())


def test_switching_in_one_loaded_model_equals_fresh_loads(tmp_path):
    """A, then B (other linears, another format and rank), then both, then none: each the same output, bit
    for bit, as a freshly made model given only that; the weights are untouched throughout."""
    model = tiny_transformer(dual=2, single=2)
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    a = write_lora(tmp_path / "a.safetensors", model, "original-peft", rank=4, seed=1)
    b = write_lora(tmp_path / "b.safetensors", model, "musubi-framepack", rank=8, seed=2, only=attention_and_ff)
    jobs = [[_choice(a)], [_choice(b, 0.5)], [_choice(a, 1.0), _choice(b, -0.5)], []]
    for loras in jobs:
        use_loras(model, loras, "cpu")
        fresh = tiny_transformer(dual=2, single=2)
        use_loras(fresh, loras, "cpu")
        assert torch.equal(stock(model, forward_inputs()), stock(fresh, forward_inputs()))
    assert all(torch.equal(v, weights_before[k]) for k, v in model.state_dict().items())


def test_the_same_loras_again_are_left_on(tmp_path, monkeypatch):
    import engine.lora

    model = tiny_transformer(dual=1, single=1)
    loras = [_choice(write_lora(tmp_path / "a.safetensors", model))]
    use_loras(model, loras, "cpu")
    monkeypatch.setattr(engine.lora, "read_lora_file", lambda *a: pytest.fail("read again"))
    use_loras(model, [dict(lora.__dict__) for lora in loras], "cpu")  # as dicts, as a stored job gives them


def test_streamed_blocks_and_precomputed_modulation_take_the_lora(tmp_path):
    """The low plan's placement by hand: blocks streamed through two slots, the AdaLN linears kept in RAM
    and worked out per section. A LoRA on every linear (the AdaLN ones included) gives the output of the
    plain model with the LoRA, bit for bit, and comes off again."""
    plain, model = tiny_transformer(dual=3, single=3), tiny_transformer(dual=3, single=3)
    lora = [_choice(write_lora(tmp_path / "a.safetensors", plain, "musubi-hunyuan"))]
    use_loras(plain, lora, "cpu")
    expected = stock(plain, forward_inputs())
    precompute_modulation(model, repeated_blocks(model))
    streamer = BlockStreamer(model, repeated_blocks(model), slots=2, ahead=1, pin=False)
    streamer.attach("cpu")
    use_loras(model, lora, "cpu")
    inputs = forward_inputs(sigma=0.9)
    prompt = Conditioning(inputs["encoder_hidden_states"], inputs["encoder_attention_mask"],
                          inputs["pooled_projections"], inputs["image_embeds"])
    calls = embedding_inputs(prompt, None, Guidance(), torch.tensor([0.9, 0.0]), torch.bfloat16)
    prepare_section(model, calls)
    assert torch.equal(stock(model, inputs), expected)
    use_loras(model, [], "cpu")
    prepare_section(model, calls)
    assert torch.equal(stock(model, inputs), stock(tiny_transformer(dual=3, single=3), inputs))
    streamer.close()


def test_a_low_plan_render_with_a_lora_is_the_high_plan_render(tiny_models_dir, tmp_path):
    """Through the engine's own loading: the low plan (every block streamed, modulation per section) renders
    the same latents as the high plan with the same LoRA, and not those without it."""
    from engine.engine_options import EngineOptions
    from engine.models import load_models
    from engine.render import render

    high = load_models("f1", "cpu", tiny_models_dir)
    low = load_models("f1", "cpu", tiny_models_dir, options=EngineOptions(memory_mode="low", cache_dir=tmp_path))
    lora = _choice(write_lora(tmp_path / "style.safetensors", high.transformer, "musubi-hunyuan", std=0.1))
    request = RenderRequest(prompt="a cat dances", seconds=1.2, steps=2, resolution=64, variant="f1", loras=(lora,))

    def latents(models, request, name):
        render(models, make_picture(), request, tmp_path / name, tmp_path / f"{name}.mp4")
        return torch.load(tmp_path / name / "latents_0001.pt")["generated"]

    with_lora = latents(high, request, "high")
    assert torch.equal(latents(low, request, "low"), with_lora)
    assert not torch.equal(latents(low, RenderRequest(**{**request.__dict__, "loras": ()}), "none"), with_lora)


def test_the_memory_plan_leaves_room_for_the_largest_loras(tmp_path):
    """The plan's GPU budget is less the MAX_LORAS largest files as bf16 pairs and their workspace; files that
    do not read count for nothing, and no LoRA folder takes nothing."""
    from safetensors import safe_open

    from engine.engine_options import EngineOptions, choose_plan
    from engine.lora import LORA_WORKSPACE, gpu_reserve_bytes
    from engine.memory_plan import FULL_SIZE, GB, Budget, plan_memory

    model = tiny_transformer(dual=2, single=2)
    files = [write_lora(tmp_path / f"r{rank}.safetensors", model, rank=rank) for rank in (2, 4, 8, 16)]
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")

    def elements(path):
        with safe_open(str(path), "pt") as weights:
            return sum(weights.get_tensor(key).numel() for key in weights.keys())  # noqa: SIM118

    expected = 2 * sum(elements(path) for path in files[1:]) + LORA_WORKSPACE
    assert gpu_reserve_bytes(tmp_path) == expected
    assert gpu_reserve_bytes(tmp_path / "none") == gpu_reserve_bytes(None) == 0
    options = EngineOptions(vram_gb=24, ram_gb=32, lora_dir=tmp_path)
    cuda = torch.device("cuda")
    assert choose_plan(options, cuda, FULL_SIZE) == plan_memory(Budget(24 * GB - expected, 32 * GB))
    assert options.budget(cuda).vram < EngineOptions(vram_gb=24, ram_gb=32).budget(cuda).vram


def _bad_files(folder: Path, model) -> list[tuple[Path, str]]:
    good = write_lora(folder / "good.safetensors", model)
    not_safetensors = folder / "notes.safetensors"
    not_safetensors.write_bytes(b"this is not a safetensors file at all")
    no_lora = folder / "weights.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.weight": torch.zeros(32, 32)}, str(no_lora))
    unmatched = folder / "other_model.safetensors"
    save_file({"transformer.down_blocks.0.proj.lora_A.weight": torch.zeros(4, 32),
               "transformer.down_blocks.0.proj.lora_B.weight": torch.zeros(32, 4)}, str(unmatched))
    wrong_shape = folder / "wide.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4)}, str(wrong_shape))
    dora = folder / "dora.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4),
               "transformer.transformer_blocks.0.attn.to_q.dora_scale": torch.zeros(1, 32)}, str(dora))
    half = folder / "half.safetensors"
    save_file({"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight": torch.zeros(4, 32)}, str(half))
    return [(good, ""), (not_safetensors, "not a safetensors file"), (no_lora, "has no LoRA keys"),
            (unmatched, "match no linear"), (wrong_shape, "do not fit"), (dora, "DoRA"), (half, "no up matrix"),
            (folder / "missing.safetensors", "no such file")]


def test_bad_files_are_refused_with_a_reason(tmp_path):
    model = tiny_transformer(dual=1, single=1)
    for path, reason in _bad_files(tmp_path, model):
        report = check_lora(path, model)
        if not reason:
            assert report.ok and report.matched == report.linears == 40 and len(report.sha256) == 64, report.summary()
            continue
        assert not report.ok and reason in report.problem, (path.name, report.problem)
        assert "refused" in report.summary()
        with pytest.raises(LoraError, match=reason):
            use_loras(model, [_choice(path)], "cpu")
    assert not any("LoraLinear" in type(m).__name__ for m in model.modules())  # nothing half put on


def test_a_file_changed_since_the_job_was_made_is_refused(tmp_path):
    model = tiny_transformer(dual=1, single=1)
    chosen = resolve_lora(f"{write_lora(tmp_path / 'a.safetensors', model)}:0.5", tmp_path)
    write_lora(tmp_path / "a.safetensors", model, seed=9)
    with pytest.raises(LoraError, match="changed since"):
        use_loras(model, [chosen], "cpu")


def test_fused_equals_unfused_and_unfusing_restores_the_weights_bit_for_bit(tmp_path):
    """Fused keeps a copy of each original weight and copies it back; the outputs agree within bf16's
    rounding of the merged weights."""
    model = tiny_transformer(dual=2, single=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loras = [_choice(write_lora(tmp_path / "a.safetensors", model, std=0.1)),
             _choice(write_lora(tmp_path / "b.safetensors", model, "musubi-framepack", rank=8, seed=3, std=0.1), 0.5)]
    use_loras(model, loras, "cpu")
    unfused = stock(model, forward_inputs())
    use_loras(model, loras, "cpu", fused=True)
    fused = stock(model, forward_inputs())
    assert _relative(fused, unfused) < 0.02
    assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    use_loras(model, [], "cpu")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fused_is_refused_where_blocks_stream(tmp_path):
    model = tiny_transformer(dual=1, single=1)
    streamer = BlockStreamer(model, repeated_blocks(model), slots=2, ahead=1, pin=False)
    model._framepack_streamer = streamer  # where place_transformer keeps it
    with pytest.raises(LoraError, match="streams blocks"):
        use_loras(model, [_choice(write_lora(tmp_path / "a.safetensors", model))], "cpu", fused=True)
    streamer.close()


def test_compiled_blocks_switch_loras_without_compiling_again(tmp_path):
    """torch.compile per block (eager backend here): the first LoRA on a set of linears compiles the blocks
    once; another LoRA on the same linears, of another rank and strength, compiles nothing; none again is
    the first graph. Every output equals the eager model's."""
    torch._dynamo.reset()
    graphs = []

    def counting(graph, _inputs):
        graphs.append(graph)
        return graph.forward

    model, eager = tiny_transformer(dual=2, single=2), tiny_transformer(dual=2, single=2)
    compile_blocks(model, backend=counting)
    a = write_lora(tmp_path / "a.safetensors", model, rank=4, only=attention_and_ff)
    b = write_lora(tmp_path / "b.safetensors", model, "musubi-hunyuan", rank=12, seed=5, only=attention_and_ff)
    counts = []
    for loras in ([], [_choice(a)], [_choice(b, 0.3)], [_choice(a, 0.7), _choice(b, 1.2)], []):
        use_loras(model, loras, "cpu")
        use_loras(eager, loras, "cpu")
        assert torch.equal(stock(model, forward_inputs()), stock(eager, forward_inputs()))
        counts.append(len(graphs))
    assert counts[1] > counts[0]  # wrapped linears: new graphs for each block kind, once
    assert counts[4] == counts[3] == counts[2] == counts[1], counts
    torch._dynamo.reset()


def test_request_choices_are_checked_and_survive_a_round_trip(tmp_path):
    lora = LoraChoice("a", "/x/a.safetensors", "0" * 64, 0.8)
    request = RenderRequest(prompt="a cat", loras=(lora,)).checked()
    assert request.loras == (lora,)
    assert RenderRequest(prompt="a cat", loras=(lora.__dict__,)).loras == (lora,)
    assert choices_problem([lora] * 2) and "once" in choices_problem([lora] * 2)
    too_many = tuple(LoraChoice(str(n), "/x", "", 1.0) for n in range(4))
    assert "at most 3" in choices_problem(too_many)
    assert "between" in choices_problem([LoraChoice("a", "/x", "", 9.0)])
    with pytest.raises(Exception, match="at most 3"):
        RenderRequest(prompt="a cat", loras=too_many).checked()


def test_names_and_strengths_resolve_in_the_lora_folder(tmp_path):
    model = tiny_transformer(dual=1, single=1)
    write_lora(tmp_path / "loras" / "style.safetensors", model)
    chosen = resolve_lora("style:0.6", tmp_path / "loras")
    assert (chosen.name, chosen.strength, Path(chosen.path).name) == ("style", 0.6, "style.safetensors")
    assert resolve_lora("style", tmp_path / "loras").strength == 1.0
    assert resolve_lora(f"{tmp_path / 'loras' / 'style.safetensors'}:-0.5", tmp_path).strength == -0.5
    with pytest.raises(LoraError, match="in .*: style"):
        resolve_lora("styel:0.6", tmp_path / "loras")


CLI = [sys.executable, "-m", "engine.cli"]


def _cli(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def test_cli_renders_with_a_lora_from_the_lora_folder_and_records_it(tiny_models_dir, tmp_path):
    from engine.models import load_transformer
    from engine.sections import Variant

    transformer = load_transformer(Variant.F1, torch.device("cpu"), tiny_models_dir)
    lora_dir = tmp_path / "loras"
    path = write_lora(lora_dir / "style.safetensors", transformer, "musubi-framepack", std=0.1)
    picture = tmp_path / "photo.png"
    make_picture(120, 90).save(picture)
    out = tmp_path / "cat.mp4"
    common = ["animate", str(picture), "a cat turns its head", "--seconds", "1.2", "--variant", "f1", "--steps", "2",
              "--models", str(tiny_models_dir), "--device", "cpu", "--resolution", "64", "--out", str(out)]
    result = _cli([*common, "--lora", "style:0.8"], tmp_path, LORA_DIR=str(lora_dir))
    assert result.returncode == 0, result.stderr
    made = read_made_with(out)
    assert made.loras == ({"name": "style", "sha256": check_lora(path, transformer).sha256, "strength": 0.8},)

    missing = _cli([*common, "--lora", "nothing:0.8"], tmp_path, LORA_DIR=str(lora_dir))
    assert missing.returncode == 2 and "No LoRA named 'nothing'" in missing.stderr and "style" in missing.stderr
    four = _cli([*common, *["--lora", "style"] * 4], tmp_path, LORA_DIR=str(lora_dir))
    assert four.returncode == 2 and "at most 3" in four.stderr


def test_cli_extend_takes_lora_too(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    result = _cli(["extend", str(video), "more", "--lora", "nothing"], tmp_path, LORA_DIR=str(tmp_path))
    assert result.returncode == 2 and "No LoRA named 'nothing'" in result.stderr



def test_fp8_linears_take_an_unfused_lora_and_refuse_a_fused_one(tmp_path):
    """ENGINE_FP8's linears (stored in e4m3 and widened per call here): the update is added in bf16 beside
    them, close to the bf16 model with the same LoRA; merging into e4m3 is refused."""
    from engine.fp8 import quantize_blocks_fp8

    plain, model = tiny_transformer(dual=1, single=1), tiny_transformer(dual=1, single=1)
    quantize_blocks_fp8(model, compute=False)
    lora = [_choice(write_lora(tmp_path / "a.safetensors", plain, only=attention_and_ff))]
    without = stock(model, forward_inputs())
    use_loras(plain, lora, "cpu")
    use_loras(model, lora, "cpu")
    got, expected = stock(model, forward_inputs()), stock(plain, forward_inputs())
    assert _relative(got, expected) < 0.5 * _relative(without, expected)
    with pytest.raises(LoraError, match="Float8"):
        use_loras(model, lora, "cpu", fused=True)
