"""A complete FramePack stack with random weights, a few MB, saved in the Hub's folder layout.

Every component is the real class with a tiny config, saved with `save_pretrained`, so the engine's
real loader reads it exactly as it would read the downloaded weights. The tokenizers are laid out as
HunyuanVideo's are: Llama 3's byte-level `tokenizer.json` (trained here on diffusers' prompt template, so
the template's prefix is the official 95 tokens) and CLIP's `vocab.json` + `merges.txt`, which both the
official pins (transformers 4.46) and the project's transformers read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from engine.models import HUNYUAN_REPO, REDUX_REPO, TRANSFORMER_REPOS
from engine.text_encoding import PROMPT_TEMPLATE

HIDDEN = 32
# Llama 3's pre-tokenizer split, so the template breaks into words the way the real tokenizer's does.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# CLIP's split (its tokenizer also lowercases and folds whitespace first).
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
PROMPTS = (
    "The girl dances gracefully, with clear movements, full of charm.",
    "A character doing some simple body movements.",
    "A cat walks across the room and looks at the camera.",
)
CORPUS = [PROMPT_TEMPLATE.format(p) for p in PROMPTS]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# HunyuanVideo's Llama tokenizer (LLaVA-Llama-3) adds these three after Llama 3's vocabulary.
LLAVA_ADDED = ["<unk>", "<image>", "<pad>"]


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


def _save_in_hub_layout(model, folder: Path, prefix: str) -> None:
    """Save as the Hub's CLIP and SigLIP checkpoints are laid out (keys under `text_model.` / `vision_model.`,
    as transformers 4 wrote them); transformers 5 saves them without the prefix and reads both."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    save_file({k if k.startswith(prefix) else prefix + k: v for k, v in state.items()}, weights,
              metadata={"format": "pt"})


def build_llama(folder: Path) -> int:
    from transformers import LlamaConfig, LlamaModel

    tok = _byte_level_tokenizer(LLAMA_SPECIALS, "<|begin_of_text|>", vocab_size=600)
    tok.add_special_tokens(LLAVA_ADDED)
    _save_tokenizer(
        tok, folder / "tokenizer",
        dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<pad>", unk_token="<unk>",
             padding_side="right", model_max_length=1024),
    )
    # The real folder names the Llama class although its tokenizer.json is byte-level: loaders must cope.
    config_path = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="LlamaTokenizer", legacy=True)
    config_path.write_text(json.dumps(config, indent=2))
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.token_to_id("<|begin_of_text|>"), eos_token_id=tok.token_to_id("<|end_of_text|>"),
        pad_token_id=tok.token_to_id("<pad>"),
    )
    LlamaModel(config).save_pretrained(folder / "text_encoder")
    return tok.get_vocab_size()


def _clip_vocab_and_merges(vocab_size: int) -> tuple[dict[str, int], list[str]]:
    """CLIP's BPE files: the 256 byte symbols, the same with `</w>`, then one entry per merge, then the specials."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, end_of_word_suffix="</w>", show_progress=False,
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
    )
    tok.train_from_iterator(PROMPTS, trainer)
    saved = json.loads(tok.to_str())["model"]["merges"]  # ["a b", ...] or [["a", "b"], ...] by version
    merges = [m if isinstance(m, str) else " ".join(m) for m in saved]
    symbols = list(bytes_to_unicode().values())
    ordered = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    ordered += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(dict.fromkeys(ordered))}, merges


def build_clip(folder: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, merges = _clip_vocab_and_merges(vocab_size=700)
    out = folder / "tokenizer_2"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                    pad_token="<|endoftext|>")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        dict(specials, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True, errors="replace",
             add_prefix_space=False),
        indent=2,
    ))
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=HIDDEN,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    _save_in_hub_layout(CLIPTextModel(config), folder / "text_encoder_2", "text_model.")


def build_vae(folder: Path) -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo(
        block_out_channels=(4, 4, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=16
    )
    vae.save_pretrained(folder / "vae")


def build_siglip(folder: Path) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8,
    )
    _save_in_hub_layout(SiglipVisionModel(config), folder / "image_encoder", "vision_model.")
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
    model.to(torch.bfloat16).save_pretrained(folder)  # stored in bf16 as on the Hub, so loading maps it lazily


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
