"""Figures for chapter "RoPE": the frequencies of the channel pairs and one pair's rotation.

Pair i of a head of width H is the channels (i, i + H/2) (Gemma's half-split layout); at position
m it is rotated by the angle ``m * theta ** (-2i / H)``.
"""

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from pgemma.rope import apply_rope, rope_cos_sin, rope_frequencies


def rotate_pair(
    vector: tuple[float, float], position: int, pair: int, head_dim: int, theta: float = 10_000.0
) -> tuple[float, float]:
    """The 2-D vector ``vector`` placed in channel pair ``pair`` and rotated by ``pgemma.rope.apply_rope``."""
    if not 0 <= pair < head_dim // 2:
        raise ValueError(f"pair must be in [0, {head_dim // 2}) for head_dim {head_dim}, got {pair}")
    x = torch.zeros(1, 1, 1, head_dim)  # (B, N, T, H)
    x[..., pair], x[..., pair + head_dim // 2] = vector[0], vector[1]
    cos, sin = rope_cos_sin(torch.tensor([[position]]), head_dim, theta, torch.float64)
    y = apply_rope(x.double(), cos, sin)[0, 0, 0]  # (H,)
    return y[pair].item(), y[pair + head_dim // 2].item()


def plot_rope_frequencies(head_dim: int, theta: float = 10_000.0, positions: int = 64) -> Figure:
    """Left: the angular speed theta_i of every pair (log scale). Right: cos(m theta_i) over positions m."""
    frequencies = rope_frequencies(head_dim, theta)  # (H/2,)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.semilogy(frequencies.numpy(), "o-", markersize=3)
    left.set_xlabel("pair i")
    left.set_ylabel(r"$\theta_i$ (radians per token)")
    left.set_title(
        f"H = {head_dim}: wavelengths {2 * math.pi:.1f} to {2 * math.pi / frequencies[-1].item():,.0f} tokens",
        fontsize=10,
    )
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * frequencies  # (T, H/2)
    image = right.imshow(angles.cos().T.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    right.set_xlabel("position m")
    right.set_ylabel("pair i")
    right.set_title(r"$\cos(m\,\theta_i)$: fast pairs on top, slow below", fontsize=10)
    figure.colorbar(image, ax=right)
    figure.tight_layout()
    return figure


def plot_rope_rotation(position: int, pair: int, head_dim: int = 16, theta: float = 10_000.0) -> Figure:
    """A unit vector in one channel pair, before and after RoPE at ``position``, with earlier positions' tips."""
    before = (1.0, 0.0)
    after = rotate_pair(before, position, pair, head_dim, theta)
    angle = position * rope_frequencies(head_dim, theta)[pair].item()
    figure, ax = plt.subplots(figsize=(4.6, 4.6))
    circle = torch.linspace(0, 2 * math.pi, 200)
    ax.plot(circle.cos().numpy(), circle.sin().numpy(), color="#cccccc")
    trail = [rotate_pair(before, m, pair, head_dim, theta) for m in range(position + 1)]
    ax.scatter([p[0] for p in trail], [p[1] for p in trail], s=10, color="#999999", zorder=2, label="positions 0..m")
    for (u, v), color, name in [
        (before, "#4c72b0", "before (position 0)"),
        (after, "#c44e52", f"after (position {position})"),
    ]:
        ax.annotate("", xy=(u, v), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": color, "lw": 2})
        ax.plot([], [], color=color, lw=2, label=name)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.set_xlabel(f"channel {pair}")
    ax.set_ylabel(f"channel {pair + head_dim // 2}")
    ax.set_title(
        f"pair {pair}, position {position}: angle {angle:.2f} rad ({math.degrees(angle) % 360:.0f} deg mod 360)",
        fontsize=10,
    )
    ax.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure
