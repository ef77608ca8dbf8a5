"""Prompt embeddings kept on disk, so re-rolls and repeated prompts skip Llama and CLIP entirely.

Keyed by the exact prompt text and the text encoders' identity (their weight files, tokenizers and
dtype): new weights or another dtype miss the cache instead of reusing embeddings they did not make.
The files sit beside the queue (DATA_DIR/cache/prompts) as safetensors, written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


class PromptCache:
    def __init__(self, folder: Path, identity: str):
        self.folder = Path(folder)
        self.identity = identity
        self.hits = self.misses = 0

    def _path(self, prompt: str) -> Path:
        key = hashlib.sha256(f"{self.identity}\0{prompt}".encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        path = self._path(prompt)
        try:
            saved = load_file(path)
        except (OSError, ValueError, RuntimeError, SafetensorError):  # absent, or torn by a crash: encode again
            self.misses += 1
            return None
        self.hits += 1
        return saved["text"], saved["mask"], saved["pooled"]

    def put(self, prompt: str, text: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> None:
        path = self._path(prompt)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            save_file({"text": text.contiguous(), "mask": mask.contiguous(), "pooled": pooled.contiguous()}, tmp)
            os.replace(tmp, path)
        except OSError as error:  # a full disk costs the next re-roll a text pass, nothing more
            log.warning("prompt cache: could not store an embedding (%s)", error)


def prompt_cache_for(cache_dir: Path | None, encoders) -> PromptCache | None:
    """The cache under `cache_dir` for these text encoders; None without a cache folder."""
    return PromptCache(Path(cache_dir) / "prompts", encoders_identity(encoders)) if cache_dir is not None else None


def encoders_identity(encoders) -> str:
    """Which text encoders made an embedding: their weights and tokenizers, and the dtype they ran in."""
    parts = [str(getattr(encoders.text_encoder, "_framepack_source", "")),
             str(getattr(encoders.text_encoder_2, "_framepack_source", "")),
             str(encoders.text_encoder.dtype), str(encoders.text_encoder_2.dtype),
             str(len(encoders.tokenizer)), str(len(encoders.tokenizer_2))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
