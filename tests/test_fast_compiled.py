"""compile_decoder (pgemma.fast.compiled): the eager model's tokens and logits (up to rounding), compiled."""

import pytest
import torch

from pgemma.fast import compiled
from pgemma.fast import linear as fast_linear
from pgemma.fast.compiled import compile_decoder
from pgemma.fast.fusion import fuse_projections
from pgemma.fast.linear import use_fast_linear
from pgemma.generate import generate_tokens
from pgemma.processor import ProcessorBatch

pytestmark = pytest.mark.skipif(compiled.cpp_compiler() is None, reason="no C++ compiler for torch.compile")


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()  # no compiled versions left by other tests count against torch.compile's limit
    torch._dynamo.utils.counters.clear()  # and the graphs counted are this test's


@pytest.mark.slow
def test_compiled_model_generates_the_eager_models_tokens(monkeypatch, configs, random_model, make_inputs):
    # Every fast path at once on a tiny model: stacked projections, oneDNN and gemv for every layer.
    monkeypatch.setattr(fast_linear, "SWAP_MIN_WEIGHTS", 0)
    monkeypatch.setattr(fast_linear, "GEMV_MIN_WEIGHTS", 0)  # one row: gemv's loop, inside the graph
    monkeypatch.setattr(fast_linear, "ONEDNN_MIN_MULTIPLY_ADDS", 0)  # more rows: oneDNN's custom operator
    config = configs["grouped_query"]
    eager = random_model(config, seed=1)
    model = use_fast_linear(fuse_projections(random_model(config, seed=1)))
    parameters = {name: id(p) for name, p in model.named_parameters()}
    assert compile_decoder(model) is model
    assert {name: id(p) for name, p in model.named_parameters()} == parameters  # the same Parameters, in place
    inputs = make_inputs(config)  # two rows, the second left-padded
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs).logits, eager(**inputs).logits, rtol=1e-5, atol=1e-5)
    for rows in (slice(0, 1), slice(0, 2)):  # batch 1 without padding, batch 2 with it
        batch = ProcessorBatch(
            inputs["input_ids"][rows],
            inputs["attention_mask"][rows],
            torch.zeros_like(inputs["input_ids"][rows]),
            inputs["pixel_values"][rows],
            None,
        )
        tokens = [torch.stack(list(generate_tokens(m, batch, max_new_tokens=8)), dim=1) for m in (eager, model)]
        assert torch.equal(*tokens)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # compiled: the prefill, the decode step


def test_without_a_cpp_compiler_the_error_says_so(monkeypatch, configs, random_model):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(
        RuntimeError,
        match=r"needs a C\+\+ compiler for torch.compile \(none of \$CXX, g\+\+, "
        r"clang\+\+ was found\)",
    ):
        compile_decoder(random_model(configs["multi_query"]))
