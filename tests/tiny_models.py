"""A complete FramePack stack with random weights, a few MB, saved in the Hub's folder layout.

Every component is the real class with a tiny config, saved with `save_pretrained`, so the engine's
real loader reads it exactly as it would read the downloaded weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from engine.models import HUNYUAN_REPO, REDUX_REPO, TRANSFORMER_REPOS
from engine.text_encoding import PROMPT_TEMPLATE

HIDDEN = 32
# Llama 3's pre-tokenizer split, so the template breaks into words the way the real tokenizer's does.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    PROMPT_TEMPLATE.format(p)
    for p in (
        "The girl dances gracefully, with clear movements, full of charm.",
        "A character doing some simple body movements.",
        "A cat walks across the room and looks at the camera.",
    )
]


def _byte_level_tokenizer(specials: list[str], bos: str | None, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok


def _save_tokenizer(tok: Tokenizer, folder: Path, config: dict) -> None:
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **config)
    fast.save_pretrained(folder)


def build_llama(folder: Path) -> int:
    from transformers import LlamaConfig, LlamaModel

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = _byte_level_tokenizer(specials, "<|begin_of_text|>", vocab_size=600)
    _save_tokenizer(
        tok, folder / "tokenizer",
        dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|end_of_text|>",
             padding_side="right", model_max_length=1024),
    )
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.token_to_id("<|begin_of_text|>"), eos_token_id=tok.token_to_id("<|end_of_text|>"),
        pad_token_id=tok.token_to_id("<|end_of_text|>"),
    )
    LlamaModel(config).save_pretrained(folder / "text_encoder")
    return tok.get_vocab_size()


def build_clip(folder: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok = _byte_level_tokenizer(specials, "<|startoftext|>", vocab_size=400)
    _save_tokenizer(
        tok, folder / "tokenizer_2",
        dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
             model_max_length=77),
    )
    config = CLIPTextConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=HIDDEN,
        bos_token_id=tok.token_to_id("<|startoftext|>"), eos_token_id=tok.token_to_id("<|endoftext|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
    )
    CLIPTextModel(config).save_pretrained(folder / "text_encoder_2")


def build_vae(folder: Path) -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo(
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16
    )
    vae.save_pretrained(folder / "vae")


def build_siglip(folder: Path) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8,
    )
    SiglipVisionModel(config).save_pretrained(folder / "image_encoder")
    processor = {
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }
    (folder / "feature_extractor").mkdir(parents=True, exist_ok=True)
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def build_transformer(folder: Path) -> None:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    model = HunyuanVideoFramepackTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1, num_refiner_layers=1,
        mlp_ratio=2.0, text_embed_dim=HIDDEN, pooled_projection_dim=HIDDEN, rope_axes_dim=(4, 6, 6),
        has_image_proj=True, image_proj_dim=HIDDEN, has_clean_x_embedder=True, guidance_embeds=True,
    )
    model.save_pretrained(folder)


def build_tiny_models(root: Path, seed: int = 0) -> Path:
    """Write the whole stack under `root` in the Hub layout (root/<repo id>/...); returns root."""
    torch.manual_seed(seed)
    hunyuan = root / HUNYUAN_REPO
    build_llama(hunyuan)
    build_clip(hunyuan)
    build_vae(hunyuan)
    build_siglip(root / REDUX_REPO)
    for index, repo in enumerate(TRANSFORMER_REPOS.values()):
        torch.manual_seed(seed + 100 + index)
        build_transformer(root / repo)
    return root


def install_into_hub_cache(models_root: Path, cache_dir: Path, repo: str, revision: str = "0" * 40) -> Path:
    """Lay one repository out as huggingface_hub's cache does: refs/main -> snapshots/<revision>/."""
    import shutil

    repo_cache = cache_dir / ("models--" + repo.replace("/", "--"))
    snapshot = repo_cache / "snapshots" / revision
    shutil.copytree(models_root / repo, snapshot, dirs_exist_ok=True)
    (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
    (repo_cache / "refs" / "main").write_text(revision)
    return snapshot
