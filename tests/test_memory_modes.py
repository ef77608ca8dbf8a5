"""The memory planner and the placements it makes, on the CPU: the decisions for a table of budgets, block
streaming (resident blocks, pinned or mapped sources), placement per phase; the video stays the same."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_picture
from engine_inputs import forward_inputs, stock, tiny_transformer
from helpers import counting_decoder_calls, video_frames

from engine.engine_options import EngineOptions, choose_plan
from engine.memory_modes import Offloaded
from engine.memory_plan import FULL_SIZE, GB, Budget, high_plan, low_plan, plan_memory
from engine.models import load_models
from engine.offload import BlockStreamer
from engine.render import RenderRequest, render
from engine.speed import repeated_blocks
from engine.text_encoding import encode_llama

CUDA = torch.device("cuda")  # only its type is read: no GPU is touched with a budget given


# (VRAM GiB, RAM GiB) -> (plan name, resident blocks, streamed from, Llama, encoders on the GPU, VAE tiled,
# AdaLN modulation kept in RAM)
PLANS = {
    (140, 128): ("high", 60, "", "gpu", True, False, ""),
    (80, 64): ("high", 60, "", "gpu", True, False, ""),
    (48, 64): ("planned", 60, "", "gpu", True, True, ""),
    (32, 32): ("planned", 60, "", "mapped", True, True, ""),  # every whole block fits: the official forward
    # the blocks without their modulation: 59 of 60 fit (whole, 32 did)
    (24, 32): ("planned", 59, "pinned", "mapped", False, True, "pinned"),  # Llama pinned would lock 28 of 32 GB
    (24, 64): ("planned", 59, "pinned", "pinned", False, True, "pinned"),
    (12, 32): ("planned", 12, "pinned", "mapped", False, True, "pinned"),
    (12, 16): ("planned", 12, "mapped", "mapped", False, True, "mapped"),
    (8, 16): ("planned", 3, "mapped", "mapped", False, True, "mapped"),
}


@pytest.mark.parametrize("budget", list(PLANS), ids=[f"{v}GB-{r}GB" for v, r in PLANS])
def test_the_plan_for_each_budget(budget):
    vram, ram = budget
    plan = plan_memory(Budget(vram * GB, ram * GB), FULL_SIZE)
    decided = (plan.name, plan.resident_blocks, plan.blocks_from, plan.llama, plan.encoders_on_gpu, plan.vae_tiled,
               plan.modulation)
    assert decided == PLANS[budget]
    assert plan.gpu_bytes <= vram * GB  # the plan's own peak estimate fits the budget
    if plan.name == "planned":  # private memory within the budget, with room left for the OS
        assert plan.private_bytes <= ram * GB - 4 * GB
    assert f"memory plan {plan.name}" in plan.describe(FULL_SIZE)


def test_wider_vae_tiles_only_in_room_nothing_else_wanted():
    """384 px tiles (a faster decode) where the plan has the room after placing everything else; 256 px
    (diffusers' default, the official low-VRAM mode's) wherever they would cost a block or Llama's place."""
    roomy = plan_memory(Budget(40 * GB, 64 * GB))
    assert roomy.vae_tiled and roomy.vae_tile == 384 and roomy.resident_blocks == 60
    assert roomy.gpu_bytes <= 40 * GB and "tiled (384 px)" in roomy.describe(FULL_SIZE)
    for budget in PLANS:
        plan = plan_memory(Budget(budget[0] * GB, budget[1] * GB))
        assert plan.vae_tile == 256  # the table's budgets have no such room
    assert low_plan(FULL_SIZE).vae_tile == 256


def test_the_engine_tiles_the_vae_as_the_plan_says():
    import copy

    from diffusers import AutoencoderKLHunyuanVideo

    from engine.engine_options import prepare_encoders
    from engine.models import Encoders

    vae = AutoencoderKLHunyuanVideo(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                                    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 4)
    for tile, fast in ((256, True), (384, True), (256, False)):
        plan = dataclasses.replace(plan_memory(Budget(40 * GB, 64 * GB)), vae_tile=tile, llama="gpu")
        encoders = Encoders(None, torch.nn.Linear(1, 1), None, torch.nn.Linear(1, 1), None, torch.nn.Linear(1, 1),
                            copy.deepcopy(vae))
        prepare_encoders(encoders, torch.device("cpu"), EngineOptions(compile=False, fast_decode=fast), plan)
        tiled = encoders.vae
        assert tiled.use_tiling and tiled.tile_sample_min_height == tiled.tile_sample_min_width == tile
        assert tiled.tile_sample_stride_height == tiled.tile_sample_stride_width == tile - 64
        # 640x608 px: 3 x 3 tiles of 256 px, 2 x 2 of 384; diffusers' decode (no fast decode) adds 7 edge
        # strips to the 256 px ones, which the third row and column cover
        calls = counting_decoder_calls(tiled)
        with torch.no_grad():
            assert tiled.decode(torch.randn(1, 16, 1, 76, 80)).sample.shape[-2:] == (608, 640)
        assert len(calls) == {(256, True): 9, (384, True): 4, (256, False): 16}[tile, fast]


def test_the_targets_private_memory():
    """README's machines: 24 GB / 32 GB within 28 GB of private memory, 8 GB / 16 GB within 14 GB."""
    assert plan_memory(Budget(24 * GB, 32 * GB)).private_bytes <= 28 * GB
    assert plan_memory(Budget(8 * GB, 16 * GB)).private_bytes <= 14 * GB
    assert plan_memory(Budget(80 * GB, 64 * GB)).private_bytes <= 16 * GB


def test_named_plans_and_auto():
    options = EngineOptions(memory_mode="low")
    assert choose_plan(options, CUDA, FULL_SIZE) == low_plan(FULL_SIZE)
    assert choose_plan(EngineOptions(memory_mode=" HIGH "), CUDA, FULL_SIZE) == high_plan(FULL_SIZE)
    assert choose_plan(EngineOptions(), torch.device("cpu"), FULL_SIZE).name == "high"  # a CPU without a budget
    budgeted = EngineOptions(vram_gb=24, ram_gb=32)
    assert choose_plan(budgeted, CUDA, FULL_SIZE) == plan_memory(Budget(24 * GB, 32 * GB))
    with pytest.raises(ValueError, match="auto, high or low"):
        choose_plan(EngineOptions(memory_mode="medium"), CUDA, FULL_SIZE)


def test_settings_reach_the_engine_options(monkeypatch):
    from storage.settings import Settings

    for name in ("ENGINE_MEMORY_MODE", "ENGINE_FP8", "ENGINE_COMPILE", "ENGINE_TEACACHE", "ENGINE_STREAM_SLOTS",
                 "ENGINE_VRAM_GB", "ENGINE_RAM_GB", "DATA_DIR", "ENGINE_FAST_DECODE"):
        monkeypatch.delenv(name, raising=False)
    defaults = EngineOptions.from_settings(Settings(_env_file=None))
    assert defaults == EngineOptions(cache_dir=Path("data") / "cache", lora_dir=Path("data") / "loras")
    monkeypatch.setenv("ENGINE_MEMORY_MODE", "low")
    monkeypatch.setenv("ENGINE_FP8", "true")
    monkeypatch.setenv("ENGINE_COMPILE", "false")
    monkeypatch.setenv("ENGINE_TEACACHE", "0.15")
    monkeypatch.setenv("ENGINE_STREAM_SLOTS", "3")
    monkeypatch.setenv("ENGINE_VRAM_GB", "24")
    monkeypatch.setenv("ENGINE_RAM_GB", "31.5")
    monkeypatch.setenv("ENGINE_FAST_DECODE", "false")
    settings = Settings()
    options = EngineOptions.from_settings(settings)
    assert options == EngineOptions(memory_mode="low", compile=False, attention="auto", fp8=True, stream_slots=3,
                                    vram_gb=24.0, ram_gb=31.5, cache_dir=Path("data") / "cache",
                                    lora_dir=Path("data") / "loras", fast_decode=False)
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
    # The fixture decodes as diffusers does; engine/fast_decode.py's decode has its own test.
    low_models = load_models("original", "cpu", tiny_models_dir,
                             options=EngineOptions(memory_mode="low", fast_decode=False))
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
    assert cache.plan.name == "low" and isinstance(models.placement, Offloaded)
    assert cache.get("f1").transformer is models.transformer  # prepared once, reused per job


def test_resident_blocks_stay_and_only_the_rest_streams():
    reference = stock(tiny_transformer(dual=3, single=3), forward_inputs())
    model = tiny_transformer(dual=3, single=3)
    streamer = BlockStreamer(model, repeated_blocks(model), slots=2, ahead=1, pin=False, resident=4)
    assert streamer.slot_of[:4] == [None] * 4 and streamer.kind_bytes.keys() == {1}  # only singles stream
    streamer.attach("cpu")
    resident = [next(b.parameters()).data_ptr() for b in repeated_blocks(model)[:4]]
    for _ in range(3):
        assert torch.equal(stock(model, forward_inputs()), reference)
    streamer.detach()
    streamer.attach("cpu")  # resident blocks are not copied again
    assert [next(b.parameters()).data_ptr() for b in repeated_blocks(model)[:4]] == resident
    assert torch.equal(stock(model, forward_inputs()), reference)
    streamer.close()


def test_streamed_blocks_from_a_mapped_file_give_the_same_output(tmp_path):
    reference = stock(tiny_transformer(dual=2, single=3), forward_inputs(seed=5))
    model = tiny_transformer(dual=2, single=3)
    path = tmp_path / "mapped" / "blocks.bin"
    streamer = BlockStreamer(model, repeated_blocks(model), pin=False, resident=1, mapped_file=path)
    assert streamer.mapped and path.is_file()
    streamer.attach("cpu")
    assert torch.equal(stock(model, forward_inputs(seed=5)), reference)
    streamer.close()
    # A second streamer over a model with the same layout maps the file as it is: the file's weights win.
    other = tiny_transformer(dual=2, single=3)
    for block in repeated_blocks(other)[1:]:
        for parameter in block.parameters():
            parameter.data.zero_()
    written = path.stat().st_mtime_ns
    reused = BlockStreamer(other, repeated_blocks(other), pin=False, resident=1, mapped_file=path)
    reused.attach("cpu")
    assert path.stat().st_mtime_ns == written
    # block 0 is the other model's own (resident), the rest the file's: not the reference, and not zeros
    assert torch.equal(repeated_blocks(other)[1].norm1.linear.weight, repeated_blocks(model)[1].norm1.linear.weight)
    reused.close()


MEMORY_PROBE = """
import gc, sys, torch
from pathlib import Path
from engine.offload import BlockStreamer
torch.manual_seed(0)
blocks = torch.nn.ModuleList([torch.nn.Linear(2048, 4096) for _ in range(8)])  # 8 blocks of 32 MiB
model = torch.nn.Sequential(*blocks)
streamer = BlockStreamer(model, list(blocks), pin=False, mapped_file=Path(sys.argv[1]) if sys.argv[1] else None)
gc.collect()
streamer.attach("cpu")
with torch.no_grad():
    model(torch.ones(1, 2048)) if False else [b(torch.ones(1, 2048)) for b in blocks]
fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(fields["RssAnon"].split()[0]) * 1024, int(fields["RssFile"].split()[0]) * 1024)
"""


def _rss(mapped: Path | None) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(mapped or "")], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    anon, file = done.stdout.split()
    return int(anon), int(file)


def test_mapped_blocks_are_not_private_memory(tmp_path):
    """RSS from /proc, not the planner's accounting: 256 MiB of blocks are private memory when copied, page
    cache when mapped."""
    path = tmp_path / "blocks.bin"
    _rss(path)  # writes the file once
    copied_anon, _ = _rss(None)
    mapped_anon, mapped_file = _rss(path)
    assert copied_anon - mapped_anon > 200 * 2**20, (copied_anon, mapped_anon)
    assert mapped_file > 200 * 2**20


# budget, and the resident blocks the tiny model (1 dual-stream block, 1 single-stream) gets: as planned
# (all of its 2), or fewer so that its blocks stream as a full-size model's do
# (budget, resident blocks, true CFG with a negative prompt and TeaCache)
SAME_VIDEO = [((24, 32), None, False), ((12, 32), 0, False), ((8, 16), 1, False), ((8, 16), None, False),
              ((12, 32), 0, True)]


@pytest.mark.parametrize(("budget", "resident", "guided"), SAME_VIDEO,
                         ids=[f"{v}GB-{r}GB-{n}{'-cfg-teacache' * g}" for (v, r), n, g in SAME_VIDEO])
def test_every_plan_renders_the_same_video(original_models, tiny_models_dir, tmp_path, budget, resident, guided,
                                           monkeypatch):
    """Each budget's placement on the tiny models (their sizes scaled up to the full stack's) gives the
    video of the all-in-memory run, bit for bit: blocks resident or streamed, the AdaLN modulation worked
    out per section."""

    import engine.engine_options
    import engine.models
    from engine.modulation import PrecomputedModulation

    vram, ram = budget
    full = plan_memory(Budget(vram * GB, ram * GB))
    if resident is not None:
        full = dataclasses.replace(full, resident_blocks=resident)
    monkeypatch.setattr(engine.models, "checkpoint_sizes", lambda *a, **k: FULL_SIZE)
    monkeypatch.setattr(engine.engine_options, "plan_memory", lambda *a, **k: full)
    # fast_decode off: the reference decodes as diffusers does (tests/test_fast_decode.py covers the other)
    options = EngineOptions(vram_gb=vram, ram_gb=ram, cache_dir=tmp_path / "cache", fast_decode=False)
    planned = load_models("original", "cpu", tiny_models_dir, options=options)
    assert planned.plan == full and full.modulation
    assert isinstance(planned.placement, Offloaded)
    assert planned.encoders.vae.use_tiling == full.vae_tiled  # the decode tiles where the plan says so
    lookups = [m for m in planned.transformer.modules() if isinstance(m, PrecomputedModulation)]
    assert len(lookups) == 3  # norm1 and norm1_context of the dual-stream block, norm of the single-stream one
    streamer = getattr(planned.transformer, "_framepack_streamer", None)
    assert (streamer.streamed if streamer else []) == list(range(resident if resident is not None else 2, 2))
    request = RenderRequest(prompt="a cat dances", seconds=2.4, steps=3, resolution=64, variant="original")
    if guided:  # two calls a step with different pooled prompts; TeaCache reads block 0's modulated norm
        request = dataclasses.replace(request, cfg=2.5, negative_prompt="blurry", teacache=0.15)
    reference = render(original_models, make_picture(), request, tmp_path / "hw", tmp_path / "high.mp4")
    result = render(planned, make_picture(), request, tmp_path / "pw", tmp_path / "planned.mp4")
    assert np.array_equal(video_frames(reference.video), video_frames(result.video))
    if streamer and streamer.streamed and full.blocks_from == "mapped":
        # the blocks stream from the checkpoint's own mapping: no copy written
        assert streamer.mapped
        assert not list((tmp_path / "cache" / "mapped").glob("transformer-*.bin"))


LOAD_PROBE = """
import sys, torch
from pathlib import Path
from engine.engine_options import EngineOptions, place_transformer
from engine.memory_plan import MemoryPlan
from engine.models import load_transformer

def private():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["RssAnon"].split()[0]) * 1024

root, source = Path(sys.argv[1]), sys.argv[2]
load_transformer("original", torch.device("cpu"), root / "warm-up", False, torch.device("cpu"))  # imports, once
before = private()
transformer = load_transformer("original", torch.device("cpu"), root, False, torch.device("cpu"))
plan = MemoryPlan("planned", 0, source, "mapped", False, True, 0, 0)
place_transformer(transformer, torch.device("cpu"), EngineOptions(cache_dir=root / "cache"), plan)
streamer = transformer._framepack_streamer
streamer.attach("cpu")
for index in streamer.streamed:
    streamer.ready(index)  # every block through its slot: read from wherever it lives
slots = streamer.slots * sum(streamer.kind_bytes.values())  # on a CPU the "device" slots are RAM too
print(private() - before - slots, sum(p.nbytes for p in streamer.packed), int(streamer.mapped))
"""


def _load_probe(root: Path, source: str) -> tuple[int, int, bool]:
    done = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(root), source], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    grown, blocks, mapped = (int(x) for x in done.stdout.split()[-3:])
    return grown, blocks, bool(mapped)


def test_loading_a_mapped_plan_keeps_the_weights_out_of_private_memory(tmp_path):
    """RSS from /proc, in a fresh process: the loader maps the bf16 checkpoint lazily and the blocks stream
    from that mapping, so loading and streaming 150 MB of blocks grows private memory by far less than them;
    the same blocks packed into RAM (a pinned plan; plain RAM on a CPU) are private, as they should be."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from engine.models import TRANSFORMER_REPOS
    from engine.sections import Variant

    root = tmp_path / "models"
    for folder, layers in ((root, 4), (root / "warm-up", 1)):
        torch.manual_seed(0)
        HunyuanVideoFramepackTransformer3DModel(
            num_attention_heads=8, attention_head_dim=64, num_layers=layers, num_single_layers=2 * layers,
            num_refiner_layers=1, text_embed_dim=64, pooled_projection_dim=64, rope_axes_dim=(16, 24, 24),
            has_image_proj=True, image_proj_dim=64, has_clean_x_embedder=True, guidance_embeds=True,
        ).to(torch.bfloat16).save_pretrained(folder / TRANSFORMER_REPOS[Variant.ORIGINAL])
    mapped_growth, blocks, mapped = _load_probe(root, "mapped")
    packed_growth, _, _ = _load_probe(root, "pinned")
    assert blocks > 120 * 2**20 and mapped
    assert mapped_growth < 0.2 * blocks, (mapped_growth, blocks)
    assert packed_growth > 0.9 * blocks, (packed_growth, blocks)
    assert not (root / "cache" / "mapped").exists()  # nothing written: the checkpoint is the mapped file


def test_a_streamer_casts_block_by_block_from_a_checkpoint_in_another_dtype(tmp_path):
    """A model that streams may keep the checkpoint's dtype in its blocks (Llama's layers do, see
    load_encoders): the streamer casts each block as it copies it from the mapping, and the forward equals
    the model cast whole at load."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from engine.denoiser import use_fp32_output_projection

    tiny_transformer(dual=2, single=2).float().save_pretrained(tmp_path / "fp32")

    def load(dtype):
        model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(tmp_path / "fp32", torch_dtype=dtype)
        return model.requires_grad_(False).eval()

    cast_at_load = load(torch.bfloat16)
    use_fp32_output_projection(cast_at_load)
    reference = stock(cast_at_load, forward_inputs(seed=3))
    lazy = load(torch.float32)
    for name, module in lazy.named_children():  # everything but the blocks cast, as the loader does
        if name not in ("transformer_blocks", "single_transformer_blocks"):
            module.to(torch.bfloat16)
    use_fp32_output_projection(lazy)
    streamer = BlockStreamer(lazy, repeated_blocks(lazy), pin=False, mapped_file=tmp_path / "blocks.bin",
                             dtype=torch.bfloat16)
    assert streamer.mapped and not (tmp_path / "blocks.bin").exists()  # streamed from the checkpoint
    streamer.attach("cpu")
    assert torch.equal(stock(lazy, forward_inputs(seed=3)), reference)
    streamer.detach()
    assert next(repeated_blocks(lazy)[0].parameters()).dtype == torch.float32  # back to the mapping


def test_resident_blocks_are_packed_straight_into_the_device(tiny_models_dir, tmp_path):
    """No RAM copy of a resident block, not even while packing: it goes from the loaded weights to its
    device buffer (the CPU stands in for the GPU here)."""
    model = tiny_transformer(dual=2, single=2)
    reference = stock(tiny_transformer(dual=2, single=2), forward_inputs(seed=2))
    streamer = BlockStreamer(model, repeated_blocks(model), pin=False, resident=3, resident_device="cpu")
    assert streamer._resident_on == torch.device("cpu") and streamer.streamed == [3]
    streamer.attach("cpu")
    assert torch.equal(stock(model, forward_inputs(seed=2)), reference)
    streamer.close()


def test_worker_loads_the_encoders_once_and_swaps_only_the_transformer(tiny_models_dir, tmp_path, monkeypatch):
    import engine.models
    import engine.worker
    from engine.worker import ModelCache
    from storage.settings import Settings

    monkeypatch.setattr(engine.models, "checkpoint_sizes", lambda *a, **k: FULL_SIZE)
    loads = []
    real_encoders, real_transformer = engine.models.load_prepared_encoders, engine.models.load_prepared_transformer
    monkeypatch.setattr(engine.models, "load_prepared_encoders",
                        lambda *a, **k: loads.append("encoders") or real_encoders(*a, **k))
    monkeypatch.setattr(engine.models, "load_prepared_transformer",
                        lambda *a, **k: loads.append("transformer") or real_transformer(*a, **k))
    settings = Settings(_env_file=None, engine_device="cpu", engine_vram_gb=24, engine_ram_gb=32,
                        framepack_models_dir=tiny_models_dir, data_dir=tmp_path)
    cache = ModelCache(settings)
    cache.get("original")
    cache.get("original")
    cache.get("f1")
    assert loads == ["encoders", "transformer", "transformer"]
    assert cache.plan.resident_blocks == 59 and isinstance(cache.get("f1").placement, Offloaded)


def test_fp8_storage_streams_and_renders_close_to_bf16(original_models, tiny_models_dir, tmp_path):
    """ENGINE_FP8 on a GPU without FP8 tensor cores (forced here): the blocks stream in FP8 and are widened
    per call; the video stays close to the bf16 one (the PSNR is printed for the record)."""
    from engine.fp8 import Float8StoredLinear

    options = EngineOptions(memory_mode="low", fp8=True, fp8_storage_only=True, cache_dir=tmp_path / "cache")
    stored = load_models("original", "cpu", tiny_models_dir, options=options)
    assert any(isinstance(m, Float8StoredLinear) for m in stored.transformer.modules())
    assert stored.transformer._framepack_streamer.streamed  # they stream, in FP8
    request = RenderRequest(prompt="a cat dances", seconds=2.4, steps=3, resolution=64, variant="original")
    reference = video_frames(render(original_models, make_picture(), request, tmp_path / "h", tmp_path / "h.mp4").video)
    frames = video_frames(render(stored, make_picture(), request, tmp_path / "f", tmp_path / "f.mp4").video)
    mse = np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2)
    psnr = 10 * np.log10(255.0**2 / max(mse, 1e-12))
    print(f"FP8 storage vs bf16 on the tiny models: PSNR {psnr:.1f} dB")
    assert frames.shape == reference.shape and 25 < psnr < 100  # close, and not the same video


def test_visiting_weights_go_in_by_one_copy_and_come_back_to_their_buffer_without_one(lively_vae):
    """A visiting module's weights live in one host buffer: a visit points them at a copy on the device, the
    end of the phase points them back at the buffer (the weights unchanged: nothing is copied back)."""
    import copy

    from engine.memory_modes import Offloaded
    from engine.offload import VisitingWeights

    vae = copy.deepcopy(lively_vae)
    before = {name: tensor.clone() for name, tensor in vae.state_dict().items()}
    weights = VisitingWeights.of(vae, pin=False)
    assert VisitingWeights.of(vae, pin=False) is weights  # one buffer, however many placements
    buffer = weights.packed.cpu
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    homes = {name: tensor.data_ptr() for name, tensor in vae.state_dict().items()}
    assert all(start <= pointer < end for pointer in homes.values())  # every tensor a view of the one buffer

    placement = Offloaded(torch.device("cpu"), None, {"vae": [vae]}, None)
    assert placement.visiting["vae"] == [weights]
    latents = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with placement.vae(), torch.no_grad():  # the copy the phase runs on, not the buffer
        assert not any(start <= tensor.data_ptr() < end for tensor in vae.state_dict().values())
        assert torch.equal(vae.decode(latents).sample, lively_vae.decode(latents).sample)
    assert {name: tensor.data_ptr() for name, tensor in vae.state_dict().items()} == homes
    for name, tensor in vae.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    with placement.image_encoder():  # a phase with nothing visiting
        assert vae.decoder.conv_in.conv.weight.device.type == "cpu"
