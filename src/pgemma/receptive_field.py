"""Receptive fields measured by gradients: which input pixels can change one output.

Book chapter: "CNN vs ViT". A convolution's output pixel depends on a small window of its input,
and stacking layers widens the window step by step; a vision transformer's patch depends on every
pixel of the image after one attention layer. Both are measured the same way here: the gradient of
one output with respect to the input image is non-zero exactly where the output can be changed.
How strongly each pixel moves the output is the *effective* receptive field (Luo et al. 2016,
"Understanding the effective receptive field in deep convolutional neural networks"): most of the
gradient sits in a square much smaller than the one the formula gives.
"""

from collections.abc import Callable

import torch
from torch import nn

from pgemma.siglip import SiglipVisionTransformer


def make_cnn(num_layers: int, channels: int = 8, kernel_size: int = 3, in_channels: int = 3) -> nn.Sequential:
    """A stack of ``num_layers`` (Conv2d, GELU) pairs that keep the image size (stride 1, same padding).

    Layer l is ``cnn[: 2 * l]``. GELU rather than ReLU, so that no gradient is exactly zero by
    accident and the measured receptive field is the whole window the convolutions allow.
    """
    if num_layers < 1 or kernel_size % 2 == 0:
        raise ValueError(f"need num_layers >= 1 and an odd kernel_size, got {num_layers} and {kernel_size}")
    layers: list[nn.Module] = []
    for index in range(num_layers):
        layers.append(
            nn.Conv2d(in_channels if index == 0 else channels, channels, kernel_size, padding=kernel_size // 2)
        )
        layers.append(nn.GELU())
    return nn.Sequential(*layers)


def input_gradient(image: torch.Tensor, output: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """How strongly each pixel moves ``output(image).sum()``: |gradient| summed over channels.

    Args:
        image: float[1, C, H, W].
        output: maps the image to the activations of interest (any shape).
    Returns:
        float[H, W], zero exactly at the pixels the output does not depend on.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W), got {tuple(image.shape)}")
    pixels = image.detach().clone().requires_grad_(True)
    output(pixels).sum().backward()
    return pixels.grad.abs().sum(dim=(0, 1))  # (H, W)


def cnn_receptive_field(cnn: nn.Sequential, image: torch.Tensor, layer: int, row: int, col: int) -> torch.Tensor:
    """float[H, W]: the pixels that move output pixel (``row``, ``col``) after ``layer`` conv layers."""
    if not 1 <= layer <= len(cnn) // 2:
        raise ValueError(f"layer must be in 1..{len(cnn) // 2}, got {layer}")
    return input_gradient(image, lambda x: cnn[: 2 * layer](x)[0, :, row, col])


def average_cnn_field(
    num_layers: int, kernel_size: int = 3, channels: int = 8, num_networks: int = 16, seed: int = 0
) -> torch.Tensor:
    """The receptive field of an architecture: ``cnn_receptive_field`` of the centre output pixel, averaged
    over ``num_networks`` random CNNs (``make_cnn``), each on a random image.

    The images are just large enough to hold the theoretical field, side S = 1 + num_layers * (kernel_size - 1),
    so no path from the centre to a pixel of the field runs through the zero padding.

    Returns:
        float[S, S], the output pixel at the centre (S // 2, S // 2).
    """
    side = 1 + num_layers * (kernel_size - 1)
    generator = torch.Generator().manual_seed(seed)
    fields = []
    with torch.random.fork_rng(devices=[]):  # make_cnn draws from the global generator; restore it afterwards
        torch.manual_seed(seed)
        for _ in range(num_networks):
            cnn = make_cnn(num_layers, channels, kernel_size)
            image = torch.randn(1, 3, side, side, generator=generator)  # (1, C, S, S)
            fields.append(cnn_receptive_field(cnn, image, num_layers, side // 2, side // 2))
    return torch.stack(fields).mean(dim=0)  # (S, S)


def effective_side(field: torch.Tensor, row: int, col: int, mass: float = 0.5) -> int:
    """The side of the smallest square centred on (``row``, ``col``) that holds ``mass`` of the field's total.

    Args:
        field: float[H, W] gradient magnitudes, e.g. from ``cnn_receptive_field``.
        row, col: the centre; squares reaching past the border are clipped to the field.
        mass: the share of the total, in (0, 1]; 0.5 gives the square holding half of the gradient.
    Returns:
        an odd side in pixels.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if not (0 <= row < field.shape[0] and 0 <= col < field.shape[1]):
        raise ValueError(f"the centre ({row}, {col}) is outside the field of shape {tuple(field.shape)}")
    total = field.sum()
    if not total > 0:
        raise ValueError("the field is zero everywhere: the output depends on no pixel")
    for radius in range(max(field.shape)):
        square = field[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1]
        if square.sum() >= mass * total:
            return 2 * radius + 1
    raise AssertionError("the largest square holds the whole field")


def vit_receptive_field(vit: SiglipVisionTransformer, image: torch.Tensor, layer: int, patch: int) -> torch.Tensor:
    """float[H, W]: the pixels that move patch ``patch`` after ``layer`` encoder layers (0: embeddings)."""
    if not 0 <= layer <= len(vit.encoder.layers):
        raise ValueError(f"layer must be in 0..{len(vit.encoder.layers)}, got {layer}")
    return input_gradient(image, lambda x: vit(x)[1][layer][0, patch])


def vit_attention(vit: SiglipVisionTransformer, image: torch.Tensor, layer: int, patch: int) -> torch.Tensor:
    """float[P]: how much patch ``patch`` attends to each patch in encoder layer ``layer`` (1-based).

    The weights are averaged over the heads; they sum to 1.
    """
    if not 1 <= layer <= len(vit.encoder.layers):
        raise ValueError(f"layer must be in 1..{len(vit.encoder.layers)}, got {layer}")
    attentions: list[torch.Tensor] = []  # each layer appends its weights, float[B, N, P, P]
    with torch.no_grad():
        vit(image, attentions)
    return attentions[layer - 1][0, :, patch].mean(dim=0)  # (P,)
