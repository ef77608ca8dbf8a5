"""`python -m engine.lora_check --lora-dir DIR [--models-dir DIR] [--variant original]`: check_lora on every
LoRA file in the folder, as JSON on stdout (a list: name, ok, matched, linears, sha256, problem).

The transformer is built from its config on the meta device: names and shapes are all a check needs, so it
takes seconds and no GPU or weights in memory. The bot's `/admin loras` runs this in a subprocess, which keeps
torch out of bot/ and the check off the bot's event loop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_NO_TRANSFORMER = 3


def shape_only_transformer(variant: str, models_dir: Path | None):
    """The FramePack transformer with its real module names and shapes and no weights (meta tensors)."""
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from engine.models import locate, transformer_part
    from engine.sections import Variant

    part = transformer_part(Variant.parse(variant))
    root = locate([part], models_dir, allow_download=False)[part.repo]
    with torch.device("meta"):
        return HunyuanVideoFramepackTransformer3DModel.from_config(
            HunyuanVideoFramepackTransformer3DModel.load_config(root))


def reports(lora_dir: Path, transformer) -> list[dict]:
    from engine.lora import check_lora, list_loras

    found = []
    for path in list_loras(lora_dir):
        report = check_lora(path, transformer)
        found.append({"name": path.stem, "ok": report.ok, "matched": report.matched, "linears": report.linears,
                      "sha256": report.sha256, "problem": report.problem})
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.lora_check")
    parser.add_argument("--lora-dir", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--variant", default="original")
    args = parser.parse_args(argv)
    from engine.models import ModelsNotFound

    try:
        transformer = shape_only_transformer(args.variant, args.models_dir)
    except (ModelsNotFound, OSError, ValueError) as error:
        print(f"The {args.variant} transformer's config was not found, so the LoRAs cannot be matched to it: "
              f"{error}", file=sys.stderr)
        return EXIT_NO_TRANSFORMER
    print(json.dumps(reports(args.lora_dir, transformer)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
