"""Which SigLIP processor the engine loads where torchvision is installed (the GPU machine has it), and
whether its input for the golden picture is the official one (tests/golden). One JSON line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from engine.image_input import prepare_image
from engine.models import siglip_processor_class

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"

processor = siglip_processor_class().from_pretrained(GOLDEN / "models" / "lllyasviel" / "flux_redux_bfl",
                                                     subfolder="feature_extractor")
cropped = prepare_image(Image.open(GOLDEN / "inputs" / "landscape.png"))
pixels = processor.preprocess(images=cropped, return_tensors="pt")["pixel_values"].half()
golden = load_file(GOLDEN / "results" / "original_true_cfg.safetensors")["siglip_pixel_values"]
print(json.dumps({"torchvision_installed": importlib.util.find_spec("torchvision") is not None,
                  "processor": type(processor).__name__, "backend": getattr(processor, "backend", "pil"),
                  "equal_to_official": bool(torch.equal(pixels, golden)),
                  "max_abs_diff": float((pixels.float() - golden.float()).abs().max()),
                  "python": sys.version.split()[0]}))
