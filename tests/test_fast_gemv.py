"""gemv (pgemma.fast.gemv), the compiled one-row product: F.linear's results up to rounding, and a clean fallback."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from pgemma.fast import gemv
from pgemma.fast import linear as fast_linear
from pgemma.fast.compiled import cpp_compiler
from pgemma.fast.linear import use_fast_linear, use_gemv_for
from pgemma.generate import generate_tokens
from pgemma.processor import ProcessorBatch

needs_compiler = pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler for torch.compile")


@pytest.fixture(autouse=True)
def fresh_compiler(monkeypatch):
    """Each test starts with no compiled versions of the product and no shape marked as failed."""
    torch._dynamo.reset()
    monkeypatch.setattr(gemv, "_compiled_shapes", set())
    monkeypatch.setattr(gemv, "_failed_shapes", set())


@needs_compiler
def test_gemv_equals_f_linear_up_to_rounding():
    generator = torch.Generator().manual_seed(0)
    for rows, columns in [(96, 80), (40, 1000)]:
        weight = torch.randn(rows, columns, generator=generator)
        for x in (torch.randn(columns, generator=generator), torch.randn(1, 1, columns, generator=generator)):
            with torch.inference_mode():
                out = gemv.gemv(x, weight)
            assert out.shape == (*x.shape[:-1], rows)
            torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-4)


@needs_compiler
def test_gemv_runs_under_no_grad_on_parameters():
    layer = torch.nn.Linear(64, 48, bias=False)
    x = torch.randn(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(gemv.gemv(x, layer.weight), layer(x), rtol=1e-5, atol=1e-4)


def test_a_shape_that_fails_to_compile_warns_once_and_returns_none(monkeypatch):
    def broken(row, weight):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(gemv, "compiled_multiply_and_sum", lambda: broken)
    weight, x = torch.randn(24, 16), torch.randn(1, 16)
    with pytest.warns(
        RuntimeWarning,
        match=r"no compiled product for a 24 x 16 weight \(RuntimeError: no C\+\+ "
        r"compiler\); its one-row products use another kernel",
    ):
        assert gemv.gemv(x, weight) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning, still None
        assert gemv.gemv(x, weight) is None


@needs_compiler
@pytest.mark.parametrize("limit", ["ours", "torch.compile's"])
def test_more_shapes_than_a_limit_fall_back_instead_of_running_eagerly(limit, monkeypatch):
    if limit == "ours":
        monkeypatch.setattr(gemv, "MAX_SHAPES", 2)
        reason = r"2 other shapes are compiled already, MAX_SHAPES"
    else:
        monkeypatch.setattr(gemv, "MAX_SHAPES", 100)
        reason = r"FailOnRecompileLimitHit"
    x = torch.randn(1, 32)
    with torch.inference_mode(), torch._dynamo.config.patch(recompile_limit=2):
        assert gemv.gemv(x, torch.randn(8, 32)) is not None
        assert gemv.gemv(x, torch.randn(9, 32)) is not None
        assert gemv.gemv(x, torch.randn(8, 32)) is not None  # compiled already
        with pytest.warns(RuntimeWarning, match=rf"for a 10 x 32 weight \({reason}"):
            assert gemv.gemv(x, torch.randn(10, 32)) is None


@needs_compiler
def test_linear_uses_gemv_for_one_row_of_a_large_matrix_and_falls_back_when_it_cannot(monkeypatch):
    weight, bias = torch.randn(512, 512), torch.randn(512)  # 2**18 weights: GEMV_MIN_WEIGHTS
    one_row, two_rows = torch.randn(1, 1, 512), torch.randn(2, 512)
    with torch.inference_mode():
        assert use_gemv_for(one_row, weight)
        assert not use_gemv_for(two_rows, weight)
        assert not use_gemv_for(one_row[..., :256], weight[:, :256].contiguous())  # 2**17 weights
        assert not use_gemv_for(one_row[..., :256], weight[:, :256])  # a strided view of the matrix
        assert not use_gemv_for(one_row.double(), weight.double())
    assert not use_gemv_for(one_row.requires_grad_(), weight)  # autograd records
    calls = []
    monkeypatch.setattr(fast_linear, "gemv", lambda *args: calls.append(1) or gemv.gemv(*args))
    with torch.inference_mode():
        torch.testing.assert_close(
            fast_linear.linear(one_row, weight, bias), F.linear(one_row, weight, bias), rtol=1e-5, atol=1e-4
        )
        assert calls == [1]
        monkeypatch.setattr(fast_linear, "gemv", lambda *args: None)  # could not compile
        torch.testing.assert_close(
            fast_linear.linear(one_row, weight, bias), F.linear(one_row, weight, bias), rtol=1e-5, atol=1e-4
        )


@needs_compiler
@pytest.mark.slow
def test_decoding_with_gemv_gives_the_plain_models_tokens(monkeypatch, configs, random_model, make_inputs):
    monkeypatch.setattr(fast_linear, "SWAP_MIN_WEIGHTS", 0)  # tiny model: swap every layer
    monkeypatch.setattr(fast_linear, "GEMV_MIN_WEIGHTS", 0)  # and send every one-row product to gemv
    shapes = set()
    monkeypatch.setattr(fast_linear, "gemv", lambda x, weight: shapes.add(weight.shape) or gemv.gemv(x, weight))
    config = configs["grouped_query"]
    plain, fast = random_model(config, seed=1), use_fast_linear(random_model(config, seed=1))
    inputs = make_inputs(config)
    batch = ProcessorBatch(
        inputs["input_ids"][:1],
        inputs["attention_mask"][:1],
        torch.zeros_like(inputs["input_ids"][:1]),
        inputs["pixel_values"][:1],
        None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every shape compiled
        greedy = [torch.stack(list(generate_tokens(m, batch, max_new_tokens=6)), dim=1) for m in (plain, fast)]
    assert torch.equal(*greedy)
    text = config.text_config
    assert torch.Size([text.intermediate_size, text.hidden_size]) in shapes  # the MLP's one-row products
    assert torch.Size([text.vocab_size, text.hidden_size]) in shapes  # and the output head's
