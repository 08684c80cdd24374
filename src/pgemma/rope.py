"""Rotary position embeddings (RoPE) as pure functions.

Book chapter: "RoPE: positions as rotations" (RoFormer, Su et al. 2021, section 3.4).

Each query and key vector is cut into pairs of channels, and pair i is rotated by the angle
``position * theta ** (-2i / H)``. The dot product of a rotated query at position m with a rotated
key at position n then depends only on m - n.

Layout: the pairs are (i, i + H/2), "half-split" as in Hugging Face Gemma and big_vision, not the
interleaved (2i, 2i + 1) of the RoFormer paper. Both are the same model up to a fixed permutation of
the channels of the q and k projections, but a checkpoint only works with the layout it was trained
with.

    interleaved:  (x0, x1) (x2, x3) (x4, x5) (x6, x7)
    half-split:   (x0, x4) (x1, x5) (x2, x6) (x3, x7)
"""

import torch


def rope_frequencies(head_dim: int, theta: float = 10_000.0) -> torch.Tensor:
    """Angular speed of each channel pair: ``theta ** (-2i / H)`` for i in [0, H/2).

    Returns:
        float32[H/2], from 1 (fastest, pair 0) down towards 1/theta.
    """
    # Written as transformers writes it (1 / theta ** ...), which rounds the same way.
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of every rotation angle, computed once per forward and shared by all layers.

    Args:
        positions: int[B, T] absolute positions of the tokens (offset by the cache length).
        head_dim: H, the width of a query or key head.
        theta: the base wavelength, 10000 in Gemma.
        dtype: dtype of the activations; the angles themselves are computed in float32.
    Returns:
        (cos, sin), each float[B, T, H] in ``dtype``; channel i and i + H/2 share an angle.
    """
    angles = positions[..., None].float() * rope_frequencies(head_dim, theta).to(positions.device)  # (B, T, H/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, H)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map each pair (a, b) = (x[i], x[i + H/2]) to (-b, a): a rotation by 90 degrees."""
    first, second = x.chunk(2, dim=-1)  # (..., H/2) each
    return torch.cat((-second, first), dim=-1)  # (..., H)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` by position-dependent angles.

    Args:
        x: float[B, N, T, H] queries or keys (N may be the number of kv heads K).
        cos, sin: float[B, T, H] from ``rope_cos_sin``.
    Returns:
        float[B, N, T, H], same dtype as ``x``.
    Note: pairs (i, i + H/2) as in HF Gemma, not interleaved (i, i + 1).
    """
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, H): the same angles for every head
    return x * cos + rotate_half(x) * sin
