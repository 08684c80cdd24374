"""Gemma's RMSNorm: float32 compute, (1 + weight), cast back; checked against transformers."""

import pytest
import torch

from pgemma.norms import GemmaRMSNorm, rms_norm


def test_zero_weight_gives_unit_root_mean_square():
    x = torch.randn(3, 5, 64) * 7 + 2
    y = GemmaRMSNorm(64)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 5), rtol=1e-4, atol=1e-4)


def test_weight_is_an_offset_from_one():
    x = torch.randn(4, 16)
    norm = GemmaRMSNorm(16)
    with torch.no_grad():
        norm.weight.fill_(1.0)  # scale 1 + 1 = 2
    torch.testing.assert_close(norm(x), 2 * GemmaRMSNorm(16)(x))


def test_half_precision_is_computed_in_float32_and_cast_at_the_end():
    x, weight = torch.randn(8, 32).bfloat16(), torch.randn(32).bfloat16()
    y = rms_norm(x, weight, 1e-6)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, rms_norm(x.float(), weight.float(), 1e-6).bfloat16())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_transformers(dtype):
    modeling_gemma = pytest.importorskip("transformers.models.gemma.modeling_gemma")
    ours, theirs = GemmaRMSNorm(48, eps=1e-6), modeling_gemma.GemmaRMSNorm(48, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = (torch.randn(2, 7, 48) * 3).to(dtype)
    assert torch.equal(ours(x), theirs(x))
