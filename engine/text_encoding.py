"""Prompt encoding with Llama 3 and CLIP, as the FramePack demos do it (SPEC.md section 1)."""

from __future__ import annotations

import torch

# diffusers' HunyuanVideo DEFAULT_PROMPT_TEMPLATE: the official text encoder crops this prefix off.
PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relation of objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
OFFICIAL_CROP_START = 95  # the template prefix in Llama 3 tokens, hard-coded by the official demos
LLAMA_3_VOCAB = 128_256
MAX_TEXT_TOKENS = 256
TEXT_PAD_LENGTH = 512
CLIP_LENGTH = 77


def template_crop_start(tokenizer) -> int:
    """Number of tokens of the template before the prompt, BOS included.

    With the real Llama 3 tokenizer this must be the official 95; a tokenizer that was silently
    rebuilt (lost spaces, other merges) would shift every prompt token, so it is refused.
    """
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    crop = len(tokenizer(prefix)["input_ids"])
    if len(tokenizer) == LLAMA_3_VOCAB and crop != OFFICIAL_CROP_START:
        raise RuntimeError(
            f"The Llama tokenizer splits the prompt template into {crop} tokens, not {OFFICIAL_CROP_START}: "
            "it was not loaded as saved. Load it with AutoTokenizer from the HunyuanVideo repository."
        )
    return crop


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
    crop = template_crop_start(tokenizer)
    batch = tokenizer(
        PROMPT_TEMPLATE.format(prompt),
        max_length=MAX_TEXT_TOKENS + crop,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    device = text_encoder.device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    valid = int(mask.sum())
    if not bool(mask[:, crop:valid].all()):
        raise RuntimeError("The Llama tokenizer must pad on the right.")
    out = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    # Layer 30 of 32 (raw, no final norm): the third entry from the end of hidden_states.
    tokens = out.hidden_states[-3][:, crop:valid]
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

