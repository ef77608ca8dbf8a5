"""Prompt encoding with Llama 3 and CLIP, as the FramePack demos do it (SPEC.md section 1).

The prompt template and its crop start come from diffusers' HunyuanVideo pipeline, which is where the
official demos take them from: never a retyped copy.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

PROMPT_TEMPLATE: str = DEFAULT_PROMPT_TEMPLATE["template"]
CROP_START: int = DEFAULT_PROMPT_TEMPLATE["crop_start"]  # the template's tokens before the prompt, BOS included
# The official `encode_prompt_conds` defaults: 256 prompt tokens, zero padded to 512; CLIP's 77.
MAX_TEXT_TOKENS = 256
TEXT_PAD_LENGTH = 512
CLIP_LENGTH = 77


def check_llama_tokenizer(tokenizer) -> None:
    """The official code crops a fixed CROP_START tokens off every prompt; a tokenizer that splits the
    template's prefix into another number of tokens (no BOS, lost spaces, another vocabulary) would
    shift every prompt token, so it is refused."""
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    count = len(tokenizer(prefix)["input_ids"])
    if count != CROP_START:
        raise ValueError(
            f"The Llama tokenizer splits the prompt template's prefix into {count} tokens, not {CROP_START}: "
            "it is not HunyuanVideo's Llama 3 tokenizer as saved. Load it with engine.models.load_llama_tokenizer."
        )


def _pad_or_crop(tokens: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, count, dim = tokens.shape
    if count >= length:
        return tokens[:, :length], torch.ones((batch, length), dtype=torch.bool, device=tokens.device)
    padded = torch.zeros((batch, length, dim), dtype=tokens.dtype, device=tokens.device)
    padded[:, :count] = tokens
    mask = torch.zeros((batch, length), dtype=torch.bool, device=tokens.device)
    mask[:, :count] = True
    return padded, mask


@torch.no_grad()
def encode_llama(prompt: str, tokenizer, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    check_llama_tokenizer(tokenizer)
    batch = tokenizer(
        PROMPT_TEMPLATE.format(prompt),
        max_length=MAX_TEXT_TOKENS + CROP_START,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    device = text_encoder.device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    valid = int(mask.sum())
    if not bool(mask[:, CROP_START:valid].all()):
        raise RuntimeError("The Llama tokenizer must pad on the right.")
    out = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    # Layer 30 of 32 (raw, no final norm): the third entry from the end of hidden_states.
    tokens = out.hidden_states[-3][:, CROP_START:valid]
    return _pad_or_crop(tokens, TEXT_PAD_LENGTH)


@torch.no_grad()
def encode_clip(prompt: str, tokenizer_2, text_encoder_2) -> torch.Tensor:
    batch = tokenizer_2(prompt, max_length=CLIP_LENGTH, padding="max_length", truncation=True, return_tensors="pt")
    return text_encoder_2(input_ids=batch["input_ids"].to(text_encoder_2.device)).pooler_output


@torch.no_grad()
def encode_prompt(prompt: str, encoders) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    text, mask = encode_llama(prompt, encoders.tokenizer, encoders.text_encoder)
    pooled = encode_clip(prompt, encoders.tokenizer_2, encoders.text_encoder_2)
    return text, mask, pooled
