"""The official demos' case goldens, one set per CPU kernel family (tests/golden/README.md)."""

from __future__ import annotations

import json

import pytest
from golden_files import cpu_kernels, golden_sets, load_cases


@pytest.mark.parametrize(("capability", "flags", "name"), [
    ("AVX2", {"avx2", "fma"}, "avx2"),  # AMD EPYC family 23
    ("AVX512", {"avx512f", "avx512_bf16"}, "avx512-bf16"),  # Zen 4
    ("AVX512", {"avx512f"}, "avx512"),  # AVX-512 without native bf16: another family
    ("AVX512", {"avx512f", "avx512_bf16", "amx_bf16"}, "avx512-bf16-amx"),  # Sapphire Rapids
])
def test_a_kernel_family_is_named_by_vector_width_and_native_bf16(capability, flags, name):
    assert cpu_kernels(capability, flags) == name


def test_each_set_holds_every_case_and_agrees_where_kernels_cannot_matter():
    """Every set has every case; the picture crop and the start latent (computed before any bf16 product) and
    the TeaCache skip counts are the same in all of them."""
    sets = golden_sets()
    assert {path.name for path in sets} >= {"avx2", "avx512-bf16"}
    for case in load_cases():
        goldens = [json.loads((path / f"{case['name']}.json").read_text()) for path in sets]
        assert all((path / f"{case['name']}.safetensors").is_file() for path in sets)
        for key in ("crop", "start_latent"):
            assert len({golden[key]["sha256"] for golden in goldens}) == 1, (case["name"], key)
        assert len({golden["teacache_skipped_calls"] for golden in goldens}) == 1, case["name"]
        for path, golden in zip(sets, goldens, strict=True):
            assert golden.get("cpu_kernels", path.name) == path.name
