"""Images as tensors, cut into patches: the first step of a vision transformer.

Chapter "Tensors, patches and tokens" explains this module; chapter "CNN vs ViT" shows that
SigLIP's patch embedding (a convolution with stride = patch size) is `patchify` followed by a
matrix multiplication.
"""

import numpy as np
import torch
from PIL import Image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """Turn a PIL image into a float tensor in [0, 1], channels first.

    Returns:
        float32[C, H, W] with C = 3 (the image is converted to RGB first).
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, C)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (C, H, W)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches, read row by row.

    Args:
        images: float[B, C, H, W]; H and W must be multiples of `patch_size`.
        patch_size: side of a patch in pixels.
    Returns:
        float[B, P, C * patch_size * patch_size], P = (H // patch_size) * (W // patch_size).
        Each patch is flattened channel first, the order `nn.Conv2d` weights use.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by patch size {patch_size}; resize or crop the image first"
        )
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, p, p)
    return patches.reshape(batch, rows * cols, channels * patch_size * patch_size)  # (B, P, C*p*p)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Put patches made by `patchify` back together; `unpatchify(patchify(x)) == x`.

    Args:
        patches: float[B, P, C * patch_size * patch_size].
    Returns:
        float[B, C, height, width].
    """
    batch, num_patches, patch_dim = patches.shape
    rows, cols = height // patch_size, width // patch_size
    if num_patches != rows * cols:
        raise ValueError(
            f"{num_patches} patches do not tile a {height}x{width} image "
            f"with patch size {patch_size} ({rows * cols} expected)"
        )
    channels = patch_dim // (patch_size * patch_size)
    grid = patches.reshape(batch, rows, cols, channels, patch_size, patch_size)
    grid = grid.permute(0, 3, 1, 4, 2, 5)  # (B, C, rows, p, cols, p)
    return grid.reshape(batch, channels, height, width)


def center_crop_to_multiple(image: Image.Image, patch_size: int) -> Image.Image:
    """Crop the borders of `image` so both sides are multiples of `patch_size`."""
    width, height = image.size
    new_width, new_height = width - width % patch_size, height - height % patch_size
    left, top = (width - new_width) // 2, (height - new_height) // 2
    return image.crop((left, top, left + new_width, top + new_height))


def num_patches(image_size: int, patch_size: int) -> int:
    """Number of patches, hence of image tokens, of a square image: (I / p) ** 2."""
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}")
    return (image_size // patch_size) ** 2
