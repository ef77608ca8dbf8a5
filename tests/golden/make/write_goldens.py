"""Turns run_official.py's records into the committed golden files (see ../README.md).

Usage, in the project's venv, on the machine that made the records:
    .venv/bin/python tests/golden/make/write_goldens.py RECORDS_DIR
The case goldens go to results/<CPU kernel family>/ (tests/golden_files.cpu_kernels).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from golden_files import case_results, cpu_kernels, digest, load_cases  # noqa: E402


def main(records: Path) -> None:
    """On the machine the records were made on: the case goldens are its CPU kernel family's."""
    results = case_results()
    results.mkdir(parents=True, exist_ok=True)
    for case in load_cases():
        record = torch.load(records / f"{case['name']}.pt", weights_only=False)
        (llama, mask), *negative = record["padded"]
        tensors = {
            "llama": llama, "llama_mask": mask, "clip_pooler": record["prompts"][0][1][1],
            "siglip_pixel_values": record["pixel_values"], "siglip": record["siglip"],
        }
        if case["cfg"] != 1.0:  # the demos encode the negative prompt only for true CFG
            tensors.update(negative_llama=negative[0][0], negative_llama_mask=negative[0][1],
                           negative_clip_pooler=record["prompts"][1][1][1])
        save_file({k: v.contiguous() for k, v in tensors.items()}, results / f"{case['name']}.safetensors")
        summary = {
            "case": case,
            "crop": digest(torch.from_numpy(record["crop"])),
            "start_latent": digest(record["start_latent"]),
            "sections": [digest(section["result"]) for section in record["sections"]],
            "previews": [digest(torch.from_numpy(p)) for p in record["previews"]],
            "transformer_calls": record["transformer_calls"],
            "teacache_skipped_calls": record["transformer_calls"] - record["block_runs"],
            "cpu_kernels": cpu_kernels(),
        }
        (results / f"{case['name']}.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(case["name"], len(summary["sections"]), "sections,", summary["teacache_skipped_calls"], "skipped calls")


main(Path(sys.argv[1]))
