import pytest
import torch

from pgemma.patches import center_crop_to_multiple, image_to_tensor, num_patches, patchify, unpatchify
from pgemma.samples import sample_photo


def test_sample_photo_is_a_real_rgb_photograph():
    photo = sample_photo()
    assert photo.mode == "RGB" and photo.size == (512, 600)
    pixels = image_to_tensor(photo)
    assert pixels.shape == (3, 600, 512) and pixels.dtype == torch.float32
    assert 0.0 <= pixels.min() < 0.05 and 0.95 < pixels.max() <= 1.0
    assert pixels.std() > 0.1  # a photograph, not a flat image


def test_patchify_reads_patches_row_by_row_channel_first():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 12)
    # patch 4 is row 1, column 1: pixels rows 2-3, columns 2-3 of every channel
    expected = images[1, :, 2:4, 2:4].reshape(-1)
    assert torch.equal(patches[1, 4], expected)
    assert torch.equal(unpatchify(patches, 2, 4, 6), images)


def test_patchify_is_the_convolution_of_the_patch_embedding():
    torch.manual_seed(0)
    images, conv = torch.randn(2, 3, 28, 28), torch.nn.Conv2d(3, 16, kernel_size=7, stride=7)
    by_conv = conv(images).flatten(2).transpose(1, 2)  # (B, P, D)
    by_matmul = patchify(images, 7) @ conv.weight.reshape(16, -1).T + conv.bias
    torch.testing.assert_close(by_conv, by_matmul, atol=1e-5, rtol=1e-5)


def test_sizes_and_errors():
    assert num_patches(224, 14) == 256 and num_patches(896, 14) == 4096
    with pytest.raises(ValueError, match="not divisible by patch size 14"):
        num_patches(100, 14)
    with pytest.raises(ValueError, match="not divisible by patch size 5"):
        patchify(torch.zeros(1, 3, 12, 12), 5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        patchify(torch.zeros(3, 12, 12), 4)
    assert center_crop_to_multiple(sample_photo(), 14).size == (504, 588)
