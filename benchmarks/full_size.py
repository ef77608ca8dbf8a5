"""The full-size FramePack stack with random weights, built straight on the GPU (no download is possible).

Shapes follow SPEC.md section 1. Weights are the classes' default random init, so outputs are
meaningless but every kernel runs at its real size.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from engine.denoiser import use_fp32_output_projection  # noqa: E402
from engine.models import Encoders, FramePackModels  # noqa: E402
from engine.sections import Variant  # noqa: E402


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _tokenizers():
    from tiny_models import CORPUS, _byte_level_tokenizer  # the offline-trained test tokenizers
    from transformers import PreTrainedTokenizerFast

    assert CORPUS
    llama = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(
            ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            "<|begin_of_text|>", 600,
        ),
        pad_token="<|end_of_text|>", padding_side="right",
    )
    clip = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(["<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", 400),
        pad_token="<|endoftext|>",
    )
    return llama, clip


def full_transformer(device: str = "cuda") -> torch.nn.Module:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    with default_dtype(torch.bfloat16), torch.device(device):
        model = HunyuanVideoFramepackTransformer3DModel(
            has_image_proj=True, image_proj_dim=1152, has_clean_x_embedder=True, guidance_embeds=True
        )
    model.requires_grad_(False).eval()
    use_fp32_output_projection(model)
    return model


def full_encoders(device: str = "cuda") -> Encoders:
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        LlamaConfig,
        LlamaModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    from engine.models import siglip_processor_class

    llama_tok, clip_tok = _tokenizers()
    with default_dtype(torch.float16), torch.device(device):
        llama = LlamaModel(LlamaConfig(
            vocab_size=128_256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
        ))
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
        ))
        siglip = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
            image_size=384, patch_size=14,
        ))
        vae = AutoencoderKLHunyuanVideo()
    processor = siglip_processor_class()(
        size={"height": 384, "width": 384}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    for module in (llama, clip, siglip, vae):
        module.requires_grad_(False).eval()
    return Encoders(llama_tok, llama, clip_tok, clip, processor, siglip, vae)


def full_models(variant: Variant, device: str = "cuda", seed: int = 0) -> FramePackModels:
    """Seeded, so that a job paused on one machine resumes with the same weights on another."""
    torch.manual_seed(seed)
    return FramePackModels(full_encoders(device), full_transformer(device), variant, torch.device(device))


def save_checkpoint(models: FramePackModels, root: Path) -> Path:
    """The built models written in the Hub layout (root/<repo id>/...), each in the dtype it is loaded in as
    the Hub's files are, beside the tests' tokenizers and configs: a checkpoint for the real loader."""
    from tiny_models import build_tiny_models

    from engine.models import HUNYUAN_REPO, REDUX_REPO, TRANSFORMER_REPOS

    build_tiny_models(root)  # tokenizers, the processor's folder and configs; every weight is replaced below
    hunyuan, redux = root / HUNYUAN_REPO, root / REDUX_REPO
    encoders = models.encoders
    for model, folder in ((encoders.text_encoder, hunyuan / "text_encoder"),
                          (encoders.text_encoder_2, hunyuan / "text_encoder_2"),
                          (encoders.image_encoder, redux / "image_encoder"), (encoders.vae, hunyuan / "vae"),
                          (models.transformer, root / TRANSFORMER_REPOS[models.variant])):
        for old in folder.glob("*.safetensors*"):
            old.unlink()
        model.save_pretrained(folder, max_shard_size="5GB")
    encoders.feature_extractor.save_pretrained(redux / "feature_extractor")
    return root
