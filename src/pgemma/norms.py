"""Gemma's RMSNorm, the only normalization in the decoder.

Book chapter: "Normalization" (which also builds LayerNorm and RMSNorm from scratch and checks
them against this module). SigLIP uses plain ``torch.nn.LayerNorm``.
"""

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each vector to unit root-mean-square, then by ``1 + weight``.

    Args:
        x: float[..., D] activations, any dtype.
        weight: float[D], the learned offset from 1.
        eps: added to the mean square to avoid dividing by zero.
    Returns:
        float[..., D], same dtype as ``x``.
    Note: computed in float32 and cast back only at the end; Llama instead casts before multiplying
    by the weight, which rounds differently in bfloat16.
    https://github.com/huggingface/transformers/pull/29402
    """
    # Gemma stores the scale as an offset from 1 (initialized to zeros): big_vision's
    # `scale = 1 + scale_param`, kept so checkpoints load unchanged.
    scale = 1.0 + weight.float()  # (D,)
    # F.rms_norm is x * rsqrt(mean(x**2) + eps) * scale in one call (the normalization chapter writes
    # it out); it multiplies in that order, so the result is bitwise the same.
    return F.rms_norm(x.float(), (x.shape[-1],), weight=scale, eps=eps).type_as(x)


class GemmaRMSNorm(nn.Module):
    """RMSNorm with Gemma's ``(1 + weight)`` scale (Zhang & Sennrich 2019, section 3)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
