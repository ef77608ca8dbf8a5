"""From a LoRA file's module names to the FramePack transformer's linears.

Original HunyuanVideo paths map as diffusers' `_convert_hunyuan_video_lora_to_diffusers` maps them (a test
checks the two agree at full size). That function is not called here: it splits the single blocks' fused
`linear1` at a hard-coded 3072 (the tiny test models are 32 wide) and takes only lora_A/lora_B names, not
musubi-tuner's flattened ones. Fused projections are split by the target linears' own sizes: `img_attn_qkv`
into to_q, to_k, to_v; `linear1` into to_q, to_k, to_v, proj_mlp. The down matrix is shared by the parts,
the up matrix's rows are split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# Original name (after the block index) -> the diffusers linears it feeds, in the order of its output rows.
DOUBLE_BLOCK = {
    "img_mod.linear": ("norm1.linear",),
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp.fc1": ("ff.net.0.proj",),
    "img_mlp.fc2": ("ff.net.2",),
    "txt_mod.linear": ("norm1_context.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp.fc1": ("ff_context.net.0.proj",),
    "txt_mlp.fc2": ("ff_context.net.2",),
}
SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.linear": ("norm.linear",),
}
REFINER_BLOCK = {
    "self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "self_attn_proj": ("attn.to_out.0",),
    "mlp.fc1": ("ff.net.0.proj",),
    "mlp.fc2": ("ff.net.2",),
    "adaLN_modulation.1": ("norm_out.linear",),
}
OUTSIDE_BLOCKS = {
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "time_in.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
# The final AdaLN's rows are (shift, scale) in the original and (scale, shift) in diffusers.
SWAPPED_HALVES = {"final_layer.adaLN_modulation.1": "norm_out.linear"}
_BLOCKS = (
    (re.compile(r"double_blocks\.(\d+)\.(.+)"), "transformer_blocks", DOUBLE_BLOCK),
    (re.compile(r"single_blocks\.(\d+)\.(.+)"), "single_transformer_blocks", SINGLE_BLOCK),
    (re.compile(r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.(.+)"),
     "context_embedder.token_refiner.refiner_blocks", REFINER_BLOCK),
)


@dataclass(frozen=True)
class Target:
    """Where a source module's update goes: `path`'s linear takes the up matrix's rows `rows` (start, stop),
    with the two halves swapped when `swap_halves`."""

    path: str
    rows: tuple[int, int] | None = None  # None: all of them
    swap_halves: bool = False


def diffusers_paths(name: str) -> tuple[tuple[str, ...], bool] | None:
    """The diffusers linears an original HunyuanVideo module feeds (in row order) and whether its halves swap;
    None when `name` is not an original path."""
    if name in OUTSIDE_BLOCKS:
        return (OUTSIDE_BLOCKS[name],), False
    if name in SWAPPED_HALVES:
        return (SWAPPED_HALVES[name],), True
    for pattern, prefix, table in _BLOCKS:
        match = pattern.fullmatch(name)
        if match and match.group(2) in table:
            return tuple(f"{prefix}.{match.group(1)}.{part}" for part in table[match.group(2)]), False
    return None


def original_names(transformer: nn.Module) -> list[str]:
    """Every original HunyuanVideo linear path this transformer has a counterpart of."""
    counts = {"double_blocks": len(transformer.transformer_blocks),
              "single_blocks": len(transformer.single_transformer_blocks),
              "txt_in.individual_token_refiner.blocks": len(transformer.context_embedder.token_refiner.refiner_blocks)}
    tables = {"double_blocks": DOUBLE_BLOCK, "single_blocks": SINGLE_BLOCK,
              "txt_in.individual_token_refiner.blocks": REFINER_BLOCK}
    names = [*OUTSIDE_BLOCKS, *SWAPPED_HALVES]
    for prefix, count in counts.items():
        names += [f"{prefix}.{index}.{part}" for index in range(count) for part in tables[prefix]]
    return names


def unflatten(flat_names, linear_paths, transformer: nn.Module) -> dict[str, str]:
    """musubi-tuner's underscore names -> dotted names (the transformer's own or original HunyuanVideo ones);
    names that match neither are left out."""
    known = {path.replace(".", "_"): path for path in [*linear_paths, *original_names(transformer)]}
    return {flat: known[flat] for flat in flat_names if flat in known}


def targets(name: str, out_features: dict[str, int]) -> list[Target] | str:
    """Where the update of module `name` (dotted) goes, or why it goes nowhere. `out_features` holds the
    transformer's linears by path; the fused originals are split by their parts' sizes."""
    mapped = diffusers_paths(name)
    if mapped is None:
        return [Target(name)] if name in out_features else f"{name}: no such linear in the FramePack transformer"
    paths, swap = mapped
    missing = [path for path in paths if path not in out_features]
    if missing:
        return f"{name}: the FramePack transformer has no {missing[0]}"
    if len(paths) == 1:
        return [Target(paths[0], swap_halves=swap)]
    found, start = [], 0
    for path in paths:
        found.append(Target(path, (start, start + out_features[path])))
        start += out_features[path]
    return found
