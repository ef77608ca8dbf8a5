"""Attention through the cuDNN frontend Python package (`pip install nvidia-cudnn-frontend`), in bf16 or in FP8.

PyTorch's own cuDNN attention runs bf16 only. The frontend also reaches cuDNN's FP8 (e4m3) fused attention:
q, k and v quantized with one scale per tensor, the softmax probabilities carried in FP8 inside the kernel.
Hopper writes that kernel's output in e4m3 too (bf16 output needs Blackwell), so there it is dequantized here.

Tensors come in the transformer's natural layout, (batch, tokens, heads, head_dim), with any strides: cuDNN
reads them through their strides, so the (batch, heads, tokens, head_dim) view it wants costs no copy.
A graph is built (planned, compiled) once per shape, strides and precision, then only executed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# The kernel quantizes the softmax probabilities (at most 1) to e4m3 with this scale: 1 lands on e4m3's largest
# value, and the typical probability here (about 1 / 18,000) still lands above e4m3's smallest normal number.
SOFTMAX_SCALE = E4M3_MAX


@dataclass
class _Built:
    graph: Any
    tensors: dict  # role -> graph tensor
    workspace: torch.Tensor
    amax_o: torch.Tensor | None = None  # the FP8 graph's amax of O: written, never read


_graphs: dict[tuple, _Built] = {}
_handles: dict[int, Any] = {}
_constants: dict[tuple, torch.Tensor] = {}


def _cudnn():
    """The frontend, imported on first use: the bot runs without it, and it needs libcudnn and a GPU."""
    try:
        import cudnn
    except Exception as error:  # ImportError, or OSError from a missing libcudnn
        raise RuntimeError(
            f"the cuDNN frontend is unavailable ({type(error).__name__}: {error}); "
            "install it with `pip install nvidia-cudnn-frontend` on a machine with an NVIDIA GPU"
        ) from error
    return cudnn


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("cuDNN attention needs a CUDA GPU, and none is visible")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_cuda or t.dtype != dtype or t.dim() != 4 or t.stride(-1) != 1:
            raise RuntimeError(
                f"{name} must be a CUDA {dtype} tensor (batch, tokens, heads, head_dim) with head_dim contiguous; "
                f"got {t.dtype} {tuple(t.shape)} strides {t.stride()} on {t.device}"
            )
    if q.shape != k.shape or k.shape != v.shape:
        raise RuntimeError(f"q, k and v must have one shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def _handle(cudnn, device: torch.device):
    """One cuDNN handle per GPU, always on torch's current stream so the kernel orders with torch's work."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    handle = _handles.get(index)
    if handle is None:
        with torch.cuda.device(index):
            handle = _handles[index] = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(index).cuda_stream)  # a no-op when unchanged
    return handle


def _bhsd(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 1, 3)  # a view: cuDNN's (batch, heads, tokens, head_dim) order over the same memory


def _key(kind: tuple, *tensors: torch.Tensor) -> tuple:
    return (kind,) + tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors)


def _declare(graph, name: str, t: torch.Tensor, data_type):
    view = _bhsd(t)
    return graph.tensor(name=name, dim=list(view.shape), stride=list(view.stride()), data_type=data_type)


def _declare_padding(cudnn, graph, tensors: dict, batch: int, padded: bool) -> dict:
    """With `padded`, the tokens past a per-call length are masked out as keys (and their query rows are junk)."""
    if not padded:
        return {}
    for name in ("seq_len_q", "seq_len_kv"):
        tensors[name] = graph.tensor(name=name, dim=[batch, 1, 1, 1], stride=[1, 1, 1, 1],
                                     data_type=cudnn.data_type.INT32)
    return {"use_padding_mask": True, "seq_len_q": tensors["seq_len_q"], "seq_len_kv": tensors["seq_len_kv"]}


def _finish(cudnn, graph, out_t, out: torch.Tensor, data_type, backend_only: bool) -> torch.Tensor:
    """Declares O with the caller's buffer layout, then plans and compiles; returns the workspace."""
    view = _bhsd(out)
    out_t.set_output(True).set_dim(list(view.shape)).set_stride(list(view.stride())).set_data_type(data_type)
    if backend_only:  # the frontend's own Python kernels (names "sdpa_fwd_prefill_smXX") out of the ranking
        graph.deselect_engines(["sdpa_fwd_prefill"])
    graph.build([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    return torch.empty(graph.get_workspace_size(), device=out.device, dtype=torch.uint8)


def _build_bf16(cudnn, handle, q, k, v, out, backend_only: bool, padded: bool) -> _Built:
    bf16, fp32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(io_data_type=bf16, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
    tensors = {name: _declare(graph, name, t, bf16) for name, t in (("q", q), ("k", k), ("v", v))}
    padding = _declare_padding(cudnn, graph, tensors, q.shape[0], padded)
    # Inference: no softmax statistics output (they are for the backward pass).
    o, _stats = graph.sdpa(
        q=tensors["q"], k=tensors["k"], v=tensors["v"], attn_scale=1.0 / math.sqrt(q.shape[-1]),
        generate_stats=False, name="sdpa", **padding,
    )
    tensors["o"] = o
    return _Built(graph, tensors, _finish(cudnn, graph, o, out, bf16, backend_only))


def _execute(built: _Built, handle, buffers: dict) -> None:
    pack = {built.tensors[name]: t for name, t in buffers.items()}
    if built.amax_o is not None:
        pack[built.tensors["amax_o"]] = built.amax_o
    built.graph.execute(pack, built.workspace, handle=handle)


def plan_name(built: _Built) -> str:
    """Which engine serves a graph: the cuDNN library itself, or one of the frontend's own Python kernels."""
    try:
        engine = built.graph.selected_engine
    except Exception:
        return "unknown"
    return "cudnn backend" if engine is None else str(engine.name)


def cached_graphs() -> dict[tuple, _Built]:
    """The built graphs, for a benchmark to report which engine served each."""
    return dict(_graphs)


def _seq_lens(valid: int | None, batch: int, device: torch.device) -> dict:
    """The padding mask's per-call data: `valid` tokens in every batch row (int32, as cuDNN reads it)."""
    if valid is None:
        return {}
    key = ("seq_len", valid, batch, device)
    if key not in _constants:
        _constants[key] = torch.full((batch, 1, 1, 1), valid, device=device, dtype=torch.int32)
    return {"seq_len_q": _constants[key], "seq_len_kv": _constants[key]}


def _graph(kind: tuple, build, *tensors: torch.Tensor) -> _Built:
    """The graph for these tensors' shapes and strides, built (planned, compiled) on first use."""
    key = _key(kind, *tensors)
    if key not in _graphs:
        _graphs[key] = build()
    return _graphs[key]


def _bf16_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend_only: bool, valid: int | None = None,
) -> torch.Tensor:
    cudnn = _cudnn()
    handle = _handle(cudnn, q.device)
    out = torch.empty_like(q)  # q's layout: each layout keeps its own graph
    padded = valid is not None
    built = _graph(("bf16", backend_only, padded),
                   lambda: _build_bf16(cudnn, handle, q, k, v, out, backend_only, padded), q, k, v, out)
    _execute(built, handle, {"q": q, "k": k, "v": v, "o": out, **_seq_lens(valid, q.shape[0], q.device)})
    return out


# --- FP8 ---------------------------------------------------------------------------------------------


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x scaled so its largest magnitude lands on e4m3's largest value; returns (e4m3 tensor, descale as (1,1,1,1)).

    Stays on the GPU (no host sync). The product is taken in bf16 against a 0-dim fp32 scale (computed in fp32,
    rounded once to bf16, then to e4m3): one pass fewer than going through fp32, and bf16 holds e4m3's 3
    mantissa bits with room to spare. The largest product rounds to 448 (from 464 up, the cast would give NaN).
    """
    amax = torch.linalg.vector_norm(x, ord=math.inf).float().clamp(min=1e-12)
    scale = E4M3_MAX / amax
    return (x * scale).to(E4M3), (amax / E4M3_MAX).reshape(1, 1, 1, 1)


def _constant(value: float, device: torch.device) -> torch.Tensor:
    key = (value, device)
    if key not in _constants:
        _constants[key] = torch.full((1, 1, 1, 1), value, device=device, dtype=torch.float32)
    return _constants[key]


def _fp8_out_dtype(device: torch.device) -> torch.dtype:
    # cuDNN writes the FP8 kernel's output in bf16 only on Blackwell (compute capability 10+); Hopper writes e4m3.
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 10 else E4M3


def _build_fp8(cudnn, handle, q8, k8, v8, out, backend_only: bool, padded: bool) -> _Built:
    e4m3, fp32, bf16 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT, cudnn.data_type.BFLOAT16
    graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
    tensors = {name: _declare(graph, name, t, e4m3) for name, t in (("q", q8), ("k", k8), ("v", v8))}
    for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"):
        tensors[name] = graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32)
    padding = _declare_padding(cudnn, graph, tensors, q8.shape[0], padded)
    # Amax_S stays virtual: the frontend marks it deprecated (SOFTMAX_SCALE is fixed instead of measured).
    o, _stats, _amax_s, amax_o = graph.sdpa_fp8(
        q=tensors["q"], k=tensors["k"], v=tensors["v"],
        descale_q=tensors["descale_q"], descale_k=tensors["descale_k"], descale_v=tensors["descale_v"],
        descale_s=tensors["descale_s"], scale_s=tensors["scale_s"], scale_o=tensors["scale_o"],
        attn_scale=1.0 / math.sqrt(q8.shape[-1]), generate_stats=False, name="sdpa_fp8", **padding,
    )
    amax_o.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
    tensors["o"], tensors["amax_o"] = o, amax_o
    out_type = bf16 if out.dtype == torch.bfloat16 else e4m3
    workspace = _finish(cudnn, graph, o, out, out_type, backend_only)
    amax_buffer = torch.empty((1, 1, 1, 1), device=out.device, dtype=torch.float32)
    return _Built(graph, tensors, workspace, amax_buffer)


def fp8_kernel(
    q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor,
    descale_q: torch.Tensor, descale_k: torch.Tensor, descale_v: torch.Tensor, *, backend_only: bool = False,
    valid: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The FP8 kernel alone on quantized inputs; returns (output, the descale to multiply it by: None for bf16)."""
    _check(q8, k8, v8, E4M3)
    cudnn = _cudnn()
    handle = _handle(cudnn, q8.device)
    out_dtype = _fp8_out_dtype(q8.device)
    out = torch.empty_like(q8, dtype=out_dtype)
    padded = valid is not None
    built = _graph(("fp8", backend_only, padded),
                   lambda: _build_fp8(cudnn, handle, q8, k8, v8, out, backend_only, padded), q8, k8, v8, out)
    # An e4m3 output is scaled by 1 / descale_v: each output row is an average of v's rows, so |O| <= amax(v)
    # and O fills e4m3's range exactly as v does. A bf16 output needs no scale.
    fp8_out = out_dtype == E4M3
    scale_o = descale_v.reciprocal() if fp8_out else _constant(1.0, q8.device)
    _execute(built, handle, {
        "q": q8, "k": k8, "v": v8, "o": out,
        "descale_q": descale_q, "descale_k": descale_k, "descale_v": descale_v,
        "descale_s": _constant(1.0 / SOFTMAX_SCALE, q8.device), "scale_s": _constant(SOFTMAX_SCALE, q8.device),
        "scale_o": scale_o, **_seq_lens(valid, q8.shape[0], q8.device),
    })
    return out, (descale_v if fp8_out else None)


def dequantize(out: torch.Tensor, descale: torch.Tensor | None) -> torch.Tensor:
    """fp8_kernel's output as bf16 (a 0-dim fp32 scale keeps the product in bf16, computed in fp32)."""
    return out if descale is None else out.to(torch.bfloat16) * descale.reshape(())


def _fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend_only: bool) -> torch.Tensor:
    (q8, dq), (k8, dk), (v8, dv) = (quantize_fp8(t) for t in (q, k, v))
    return dequantize(*fp8_kernel(q8, k8, v8, dq, dk, dv, backend_only=backend_only))


def cudnn_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fp8: bool = False, *, backend_only: bool = False,
) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(head_dim)) v for (batch, tokens, heads, head_dim) bf16 tensors, no mask.

    fp8=True quantizes q, k and v per tensor to e4m3 first (results differ from bf16 by a few percent).
    backend_only=True keeps the frontend's own Python kernels out, so the cuDNN library serves the call.
    Raises RuntimeError when the frontend package or a GPU is missing, or the inputs do not fit.
    """
    _check(q, k, v, torch.bfloat16)
    if fp8 and q.shape[-1] % 16:
        raise RuntimeError(f"cuDNN FP8 attention needs head_dim divisible by 16; got {q.shape[-1]}")
    return _fp8_attention(q, k, v, backend_only) if fp8 else _bf16_attention(q, k, v, backend_only)


# --- In the transformer's blocks ---------------------------------------------------------------------
# Custom ops, so that torch.compile keeps each block in one graph around the cuDNN call (a plain Python
# call would break it in two) and fuses the padding and the FP8 quantization into the kernels before it.

# cuDNN's tile. An aligned length runs faster unmasked (18,304 tokens: 5.8 ms, 18,253: 6.3-6.9 ms), but the
# masked kernel measured no faster than the unaligned one; padding costs one fused copy, and it keeps every
# prompt length on the same kernel family as the aligned case.
ALIGN = 128


@torch.library.custom_op("framepack::cudnn_sdpa", mutates_args=())
def _sdpa_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: int) -> torch.Tensor:
    _check(q, k, v, torch.bfloat16)
    return _bf16_attention(q, k, v, backend_only=False, valid=valid if valid < q.shape[1] else None)


@_sdpa_op.register_fake
def _(q, k, v, valid):
    return torch.empty_like(q)


@torch.library.custom_op("framepack::cudnn_sdpa_fp8", mutates_args=())
def _sdpa_fp8_op(
    q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor,
    descale_q: torch.Tensor, descale_k: torch.Tensor, descale_v: torch.Tensor, valid: int,
) -> torch.Tensor:
    out, _descale = fp8_kernel(q8, k8, v8, descale_q, descale_k, descale_v,
                               valid=valid if valid < q8.shape[1] else None)
    return out


@_sdpa_fp8_op.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v, valid):
    return torch.empty_like(q8, dtype=_fp8_out_dtype(q8.device))


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fp8: bool = False) -> torch.Tensor:
    """Attention for (batch, tokens, heads, head_dim) bf16 tensors through cuDNN, no mask, any token count.

    The tokens are padded to a multiple of ALIGN and the padding is masked out as keys, which gives the
    unpadded result (a masked key has zero weight); the padded query rows
    are cut off. fp8=True quantizes q, k and v per tensor first (a few percent off bf16).
    """
    tokens = q.shape[1]
    extra = -tokens % ALIGN
    if extra:
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, extra)) for t in (q, k, v))
    if fp8:
        (q8, dq), (k8, dk), (v8, dv) = (quantize_fp8(t) for t in (q, k, v))
        out = _sdpa_fp8_op(q8, k8, v8, dq, dk, dv, tokens)
        if out.dtype != torch.bfloat16:  # Hopper's e4m3 output, scaled by 1 / descale_v
            out = dequantize(out, dv)
    else:
        out = _sdpa_op(q, k, v, tokens)
    return out[:, :tokens]
