"""Bit-for-bit parity with lllyasviel/FramePack's own demo loops, from the same picture files and prompts.

The golden files in tests/golden/results/<CPU kernel family>/ were written by running the official demo_gradio.py and
demo_gradio_f1.py (unmodified, on the CPU) on the tiny weights in tests/golden/models/; golden/README.md
says exactly how. Here the project's own code computes every stage from the same raw inputs: the bucket
crop, the Llama embeddings and mask, the CLIP pooler, the SigLIP input and embedding, the start latent,
every section's latents and every step's preview, and each must equal the official one exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from golden_files import GOLDEN_DIR, case_results, cpu_kernels, golden_sets, load_cases, mismatch
from PIL import Image
from safetensors.torch import load_file

from engine.image_input import prepare_image
from engine.models import OFFICIAL_DTYPES, load_models
from engine.preview import latent_preview
from engine.render import RenderRequest
from engine.section_sampler import SectionSampler, encode_conditioning

CASES = load_cases()
RESULTS = case_results()
# The last bits of bf16 and fp16 products are the CPU kernels' (tests/golden/README.md): each kernel family
# has goldens the official demos computed on it; a machine of another family cannot check exact parity.
pytestmark = pytest.mark.skipif(
    not RESULTS.is_dir(), reason=f"no goldens for this CPU's kernels ({cpu_kernels()}; goldens exist for "
    f"{', '.join(path.name for path in golden_sets())}): tests/golden/README.md says how to make them")
DEMO_TEACACHE_THRESHOLD = 0.15  # the demos' checkbox turns TeaCache on at this threshold
GOLDEN_THREADS = 2


@pytest.fixture(scope="module", autouse=True)
def golden_threads():
    """The goldens were made with 2 threads: the same reduction order whatever the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(GOLDEN_THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden_models():
    loaded = {}

    def get(variant: str):
        if variant not in loaded:
            loaded[variant] = load_models(variant, "cpu", GOLDEN_DIR / "models", allow_download=False,
                                          dtypes=OFFICIAL_DTYPES)
        return loaded[variant]

    return get


def _request(case: dict) -> RenderRequest:
    return RenderRequest(
        prompt=case["prompt"], seconds=case["seconds"], variant=case["variant"], seed=case["seed"],
        steps=case["steps"], window=case["window"], distilled_guidance=case["distilled_guidance"],
        cfg=case["cfg"], cfg_rescale=case["cfg_rescale"], negative_prompt=case["negative_prompt"],
        teacache=DEMO_TEACACHE_THRESHOLD if case["teacache"] else 0.0,
    ).checked()


def _assert_same_tensor(mine: torch.Tensor, golden: torch.Tensor, what: str) -> None:
    assert mine.shape == golden.shape and mine.dtype == golden.dtype, (
        f"{what}: {tuple(mine.shape)} {mine.dtype} != official {tuple(golden.shape)} {golden.dtype}")
    if not torch.equal(mine, golden):
        diff = (mine.float() - golden.float()).abs()
        raise AssertionError(f"{what} differs from the official: {int((diff > 0).sum())} values, max {diff.max():.3g}")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_the_official_demo_bit_for_bit(golden_models, case):
    golden = json.loads((RESULTS / f"{case['name']}.json").read_text())
    tensors = load_file(RESULTS / f"{case['name']}.safetensors")
    models = golden_models(case["variant"])
    request = _request(case)

    # 1. The picture file, cropped to its bucket.
    cropped = prepare_image(Image.open(GOLDEN_DIR / "inputs" / case["picture"]))
    assert mismatch(torch.from_numpy(np.ascontiguousarray(cropped)), golden["crop"]) is None, "bucket crop"

    # 2. Prompt and picture embeddings and the start latent, as the render computes them.
    pixels = models.encoders.feature_extractor.preprocess(images=cropped, return_tensors="pt")["pixel_values"]
    # What the encoder is fed: the processor's output in the encoder's fp16, in the demos as here.
    _assert_same_tensor(pixels.to(models.encoders.image_encoder.dtype), tensors["siglip_pixel_values"],
                        "SigLIP input")
    conditioning = encode_conditioning(models, cropped, request)
    positive = conditioning.positive
    _assert_same_tensor(positive.text, tensors["llama"], "Llama embeddings")
    _assert_same_tensor(positive.text_mask, tensors["llama_mask"], "Llama mask")
    _assert_same_tensor(positive.pooled, tensors["clip_pooler"], "CLIP pooler")
    _assert_same_tensor(positive.image, tensors["siglip"], "SigLIP embedding")
    if case["cfg"] != 1.0:
        negative = conditioning.negative
        _assert_same_tensor(negative.text, tensors["negative_llama"], "negative Llama embeddings")
        _assert_same_tensor(negative.text_mask, tensors["negative_llama_mask"], "negative Llama mask")
        _assert_same_tensor(negative.pooled, tensors["negative_clip_pooler"], "negative CLIP pooler")
    # The demos keep the start latent in the VAE's fp16; the render holds the same values as fp32.
    assert mismatch(conditioning.start_latent.half(), golden["start_latent"]) is None, "start latent"

    # 3. Every section, in generation order, with every step's preview.
    sampler = SectionSampler(models, request, conditioning)
    previews = []
    for index, expected in enumerate(golden["sections"]):
        generated = sampler.sample(index, on_step=lambda _step, x0: previews.append(latent_preview(x0)))
        problem = mismatch(generated, expected)
        assert problem is None, f"section {index + 1} of {len(golden['sections'])}: {problem}"
    assert index + 1 == request.sections
    assert len(previews) == len(golden["previews"])
    for step, (preview, expected) in enumerate(zip(previews, golden["previews"], strict=True)):
        assert mismatch(torch.from_numpy(preview), expected) is None, f"preview after call {step + 1}"
    if case["teacache"]:
        assert sampler.teacache.skipped_total == golden["teacache_skipped_calls"] > 0
