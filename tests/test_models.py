"""The real loader on the tiny stack: local folders, the Hugging Face cache, offline mode, clear failures."""

from __future__ import annotations

import shutil

import pytest
import torch
from huggingface_hub import constants as hf_constants
from tiny_models import install_into_hub_cache

from engine import models as m
from engine.sections import Variant
from engine.text_encoding import CROP_START, PROMPT_TEMPLATE, check_llama_tokenizer, encode_prompt


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_loads_every_component_from_a_local_folder(original_models):
    enc = original_models.encoders
    assert type(enc.text_encoder).__name__ == "LlamaModel"
    assert type(enc.text_encoder_2).__name__ == "CLIPTextModel"
    assert type(enc.image_encoder).__name__ == "SiglipVisionModel"
    assert type(enc.vae).__name__ == "AutoencoderKLHunyuanVideo"
    transformer = original_models.transformer
    assert type(transformer).__name__ == "HunyuanVideoFramepackTransformer3DModel"
    assert transformer.dtype == torch.bfloat16
    assert transformer.proj_out.weight.dtype == torch.float32  # the demos' fp32 output projection
    assert original_models.device.type == "cpu"


def test_each_variant_loads_its_own_checkpoint(original_models, f1_models):
    a = original_models.transformer.x_embedder.proj.weight
    b = f1_models.transformer.x_embedder.proj.weight
    assert not torch.equal(a.float(), b.float())


def test_missing_folder_names_what_is_missing(tiny_models_dir, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(tiny_models_dir, broken)
    shutil.rmtree(broken / m.TRANSFORMER_REPOS[Variant.F1])
    shutil.rmtree(broken / m.HUNYUAN_REPO / "vae")
    with pytest.raises(m.ModelsNotFound) as caught:
        m.load_models("f1", "cpu", broken)
    message = str(caught.value)
    assert "lllyasviel/FramePack_F1_I2V_HY_20250503" in message
    assert "hunyuanvideo-community/HunyuanVideo/vae" in message
    assert "huggingface-cli download" in message
    shutil.copytree(tiny_models_dir / m.HUNYUAN_REPO / "vae", broken / m.HUNYUAN_REPO / "vae")
    m.locate(m.parts_for([Variant.ORIGINAL]), broken, allow_download=False)  # the other variant is whole


def test_corrupt_weights_give_a_clear_message(tiny_models_dir, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(tiny_models_dir, broken)
    weights = broken / m.TRANSFORMER_REPOS[Variant.ORIGINAL] / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(m.ModelsNotFound, match="original transformer"):
        m.load_transformer(Variant.ORIGINAL, torch.device("cpu"), broken)


def test_loads_from_the_hub_cache_offline(tiny_models_dir, offline_cache):
    for repo in (m.HUNYUAN_REPO, m.REDUX_REPO, m.TRANSFORMER_REPOS[Variant.F1]):
        install_into_hub_cache(tiny_models_dir, offline_cache, repo)
    models = m.load_models("f1", "cpu", models_dir=None, allow_download=True)
    assert models.variant is Variant.F1
    assert type(models.transformer).__name__ == "HunyuanVideoFramepackTransformer3DModel"


def test_offline_with_an_empty_cache_says_to_download(offline_cache):
    with pytest.raises(m.ModelsNotFound) as caught:
        m.load_models("original", "cpu", models_dir=None)
    message = str(caught.value)
    assert "framepack-bot download" in message
    assert str(offline_cache) in message


def test_incomplete_cached_snapshot_is_reported(tiny_models_dir, offline_cache):
    for repo in (m.HUNYUAN_REPO, m.REDUX_REPO, m.TRANSFORMER_REPOS[Variant.ORIGINAL]):
        snapshot = install_into_hub_cache(tiny_models_dir, offline_cache, repo)
    shutil.rmtree(snapshot.parent.parent.parent / ("models--" + m.REDUX_REPO.replace("/", "--")) / "snapshots"
                  / snapshot.name / "image_encoder")
    with pytest.raises(m.ModelsNotFound, match="flux_redux_bfl/image_encoder"):
        m.load_models("original", "cpu", models_dir=None)


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(m.DeviceUnavailable, match="--device cpu"):
        m.resolve_device(None)
    with pytest.raises(m.DeviceUnavailable, match="no CUDA GPU"):
        m.resolve_device("cuda")
    assert m.resolve_device("cpu").type == "cpu"


def test_dtypes_follow_spec_on_cuda():
    d = m.dtypes_for(torch.device("cuda"))
    assert (d.text, d.vae, d.image, d.transformer) == (torch.float16, torch.float16, torch.float16, torch.bfloat16)


def test_tokenizer_is_loaded_as_saved(original_models):
    tokenizer = original_models.encoders.tokenizer
    text = PROMPT_TEMPLATE.format("A girl  dances, then   spins.")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # spaces survive the round trip


def test_template_is_diffusers_own():
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    assert PROMPT_TEMPLATE is DEFAULT_PROMPT_TEMPLATE["template"]
    assert CROP_START == DEFAULT_PROMPT_TEMPLATE["crop_start"] == 95


def test_crop_start_removes_exactly_the_template(original_models):
    tokenizer = original_models.encoders.tokenizer
    prompt = "The girl dances gracefully, with clear movements, full of charm."
    ids = tokenizer(PROMPT_TEMPLATE.format(prompt))["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[CROP_START:]) == prompt + "<|eot_id|>"


def test_a_tokenizer_that_splits_the_template_otherwise_is_refused(original_models):
    real = original_models.encoders.tokenizer

    def drifted(text, **kwargs):  # what a silent rebuild gives: the same vocabulary, other splits
        return real(text.replace(" ", "  "), **kwargs)

    def no_bos(text, **kwargs):
        return real(text, add_special_tokens=False, **kwargs)

    for tokenizer in (drifted, no_bos):
        with pytest.raises(ValueError, match="not 95"):
            check_llama_tokenizer(tokenizer)


def test_loader_adds_bos_like_the_demos_llama_tokenizer(tiny_models_dir, tmp_path):
    """A tokenizer.json without a BOS post-processor (the npm copy of Llama 3's has none) still gets BOS."""
    import json
    import shutil

    folder = tmp_path / "tokenizer"
    shutil.copytree(tiny_models_dir / m.HUNYUAN_REPO / "tokenizer", folder)
    saved = json.loads((folder / "tokenizer.json").read_text())
    saved["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                               "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(saved))
    tokenizer = m.load_llama_tokenizer(tmp_path)
    ids = tokenizer("a cat")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids


def test_siglip_processor_is_the_pil_one(original_models):
    """The demos resize with PIL; transformers 5 would pick its torchvision backend where torchvision is installed."""
    assert type(original_models.encoders.feature_extractor).__name__ in ("SiglipImageProcessorPil",
                                                                          "SiglipImageProcessor")
    assert getattr(original_models.encoders.feature_extractor, "backend", "pil") == "pil"


def test_prompt_embeddings_have_the_spec_shapes(original_models):
    text, mask, pooled = encode_prompt("a cat walks", original_models.encoders)
    assert text.shape == (1, 512, 32) and mask.shape == (1, 512) and mask.dtype == torch.bool
    valid = int(mask.sum())
    assert 0 < valid < 512 and bool(mask[0, :valid].all()) and not bool(mask[0, valid:].any())
    assert text[0, valid:].abs().sum() == 0
    assert pooled.shape == (1, 32)
    longer, longer_mask, _ = encode_prompt("a cat walks slowly across the room", original_models.encoders)
    assert int(longer_mask.sum()) > valid
