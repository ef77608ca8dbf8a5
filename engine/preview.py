"""Cheap previews: latent-to-RGB per step and a small GIF per finished section."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Linear map from HunyuanVideo's 16 latent channels to RGB (SPEC.md section 7, from ComfyUI).
LATENT_RGB_FACTORS = torch.tensor(
    [
        [-0.0395, -0.0331, 0.0445], [0.0696, 0.0795, 0.0518], [0.0135, -0.0945, -0.0282],
        [0.0108, -0.0250, -0.0765], [-0.0209, 0.0032, 0.0224], [-0.0804, -0.0254, -0.0639],
        [-0.0991, 0.0271, -0.0669], [-0.0646, -0.0422, -0.0400], [-0.0696, -0.0595, -0.0894],
        [-0.0799, -0.0208, -0.0375], [0.1166, 0.1627, 0.0962], [0.1165, 0.0432, 0.0407],
        [-0.2315, -0.1920, -0.1355], [-0.0270, 0.0401, -0.0821], [-0.0616, -0.0997, -0.0727],
        [0.0249, -0.0469, -0.1703],
    ]
)
LATENT_RGB_BIAS = torch.tensor([0.0259, -0.0192, -0.0761])

GIF_MAX_WIDTH = 480
GIF_MAX_BYTES = 2_000_000


def latent_preview(latents: torch.Tensor) -> np.ndarray:
    """(1, 16, T, h, w) latents -> uint8 (h, T*w, 3): the T frames side by side, 1/8 scale.

    A 1x1x1 convolution, as the demos compute it: an einsum sums in another order and moved a pixel by one.
    """
    z = latents[:1].detach().float().cpu()
    weight = LATENT_RGB_FACTORS.T[:, :, None, None, None]
    rgb = torch.nn.functional.conv3d(z, weight, bias=LATENT_RGB_BIAS).clamp(0.0, 1.0)  # (1, 3, T, h, w)
    pixels = (rgb[0] * 255.0).numpy().clip(0, 255).astype(np.uint8)
    return np.concatenate(list(pixels.transpose(1, 2, 3, 0)), axis=1)


def _encode_gif(frames: np.ndarray, width: int, stride: int, fps: int) -> bytes:
    """Resize, quantize each frame with the fast octree (a tenth of a second for a section), and save."""
    height = max(2, round(frames.shape[1] * width / frames.shape[2]))
    images = [
        Image.fromarray(frame)
        .resize((width, height), Image.BILINEAR)
        .quantize(colors=128, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        for frame in frames[::stride]
    ]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 * stride / fps), loop=0)
    return buffer.getvalue()


def section_gif(frames: np.ndarray, path: Path, fps: int = 30) -> Path:
    """Write a looping GIF of uint8 (T, H, W, 3) frames: at most 480 px wide and 2 MB.

    Starts at 15 fps and up to 480 px, then shrinks, then lowers the frame rate until it fits.
    """
    width = min(frames.shape[2], GIF_MAX_WIDTH)
    stride = 2
    while True:
        data = _encode_gif(frames, width, stride, fps)
        if len(data) <= GIF_MAX_BYTES:
            break
        if width > 120:
            width = int(width * 0.75)
        elif stride < len(frames):
            stride *= 2
        else:
            raise RuntimeError("A one-frame preview GIF does not fit in 2 MB.")
    path.write_bytes(data)
    return path
