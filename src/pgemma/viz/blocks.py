"""Figures for chapter "Transformer blocks": GELU against its tanh approximation, and the residual stream.

The residual stream is the vector each token carries from layer to layer: every sublayer reads it
through a norm and adds its output back. The chapter measures it; this module only draws it.
"""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

STREAM_COLOR, ATTENTION_COLOR, MLP_COLOR = "tab:blue", "tab:orange", "tab:green"


def gelu_difference(low: float = -6.0, high: float = 6.0, points: int = 12_001) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact GELU minus its tanh approximation on an even grid of ``points`` values in [low, high].

    Returns:
        (x float64[points], gelu(x) - gelu_tanh(x) float64[points]).
    """
    if not low < high or points < 2:
        raise ValueError(f"need low < high and at least 2 points, got [{low}, {high}] with {points}")
    x = torch.linspace(low, high, points, dtype=torch.float64)
    return x, F.gelu(x) - F.gelu(x, approximate="tanh")


def plot_gelu_approximation(low: float = -6.0, high: float = 6.0) -> Figure:
    """Left: GELU, x * Phi(x), and its tanh approximation. Right: their difference, largest marked."""
    x, difference = gelu_difference(low, high)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(x.numpy(), F.gelu(x).numpy(), color="black", linewidth=2.5, label=r"exact: $x\,\Phi(x)$")
    left.plot(x.numpy(), F.gelu(x, approximate="tanh").numpy(), color="tab:red", linestyle="--", label="tanh")
    left.set_xlabel("x")
    left.set_title("GELU and its tanh approximation: the curves overlap", fontsize=10)
    left.legend()
    largest = int(difference.abs().argmax())
    right.plot(x.numpy(), difference.numpy(), color="tab:red")
    right.plot([x[largest].item()], [difference[largest].item()], "ko")
    right.axhline(0.0, color="#999999", linewidth=0.8)
    right.set_xlabel("x")
    right.set_title(
        # The difference is even in x: the same largest value at -x and x.
        f"exact - tanh: largest |difference| {difference[largest].abs().item():.2e} "
        f"at x = ±{x[largest].abs().item():.2f}",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def plot_residual_stream(
    stream: torch.Tensor,
    attention_updates: torch.Tensor,
    mlp_updates: torch.Tensor,
    position: int,
    tokens: list[str] | None = None,
) -> Figure:
    """The size of the residual stream through the layers, and of what each sublayer adds to it.

    Args:
        stream: float[L + 1, T], the RMS of every token's stream vector: the decoder's input, then
            the output of each of the L layers.
        attention_updates, mlp_updates: float[L, T], the RMS of what each layer's attention and
            MLP added to each token's stream.
        position: the token drawn in colour on the left and in bars on the right.
        tokens: T labels, one per position (default: the position numbers).
    Returns:
        Left: every token's stream RMS per layer (grey), the median (black), ``position`` (blue).
        Right: for ``position``, the stream RMS entering each layer and the two updates.
    """
    layers, length = attention_updates.shape
    if stream.shape != (layers + 1, length) or mlp_updates.shape != (layers, length):
        raise ValueError(
            f"expected stream (L + 1, T) and updates (L, T), got {tuple(stream.shape)}, "
            f"{tuple(attention_updates.shape)} and {tuple(mlp_updates.shape)}"
        )
    if not 0 <= position < length:
        raise ValueError(f"position must be in [0, {length}), got {position}")
    if tokens is not None and len(tokens) != length:
        raise ValueError(f"expected {length} token labels, got {len(tokens)}")
    label = repr(tokens[position]) if tokens is not None else f"position {position}"
    depth = torch.arange(layers + 1).numpy()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    left.plot(depth, stream.numpy(), color="#cccccc", linewidth=0.8)
    left.plot(depth, stream.median(dim=1).values.numpy(), color="black", linewidth=2, label="median token")
    left.plot(depth, stream[:, position].numpy(), "o-", color=STREAM_COLOR, linewidth=2, label=label)
    left.set_xticks(depth, ["input"] + [str(i) for i in range(1, layers + 1)])
    left.set_xlabel("after layer")
    left.set_ylabel("RMS of the stream vector")
    left.set_title("the residual stream grows as the layers add to it (grey: every token)", fontsize=10)
    left.legend(fontsize=8)
    index, width = torch.arange(layers).numpy(), 0.27
    right.bar(index - width, stream[:-1, position].numpy(), width, color=STREAM_COLOR, label="stream, entering")
    right.bar(index, attention_updates[:, position].numpy(), width, color=ATTENTION_COLOR, label="attention adds")
    right.bar(index + width, mlp_updates[:, position].numpy(), width, color=MLP_COLOR, label="MLP adds")
    right.set_xticks(index, [str(i) for i in range(1, layers + 1)])
    right.set_xlabel("layer")
    right.set_ylabel("RMS")
    right.set_title(f"token {label} (position {position}): what each layer adds", fontsize=10)
    right.legend(fontsize=8)
    figure.tight_layout()
    return figure
