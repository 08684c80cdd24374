"""FastLinear layers (pgemma.fast.linear: oneDNN for large products): nn.Linear's results up to rounding,
same parameters, opt-in."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgemma.config import GemmaConfig
from pgemma.fast import linear as fast_linear
from pgemma.fast.linear import FastLinear, onednn_available, onednn_linear, use_fast_linear, use_onednn_for
from pgemma.gemma import GemmaForCausalLM
from pgemma.generate import generate_tokens
from pgemma.processor import ProcessorBatch

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


def test_onednn_linear_equals_f_linear_up_to_rounding():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(384, 256, generator=generator), torch.randn(384, generator=generator)
    for x in (
        torch.randn(8, 256, generator=generator),
        torch.randn(3, 5, 256, generator=generator),
        torch.randn(5, 3, 256, generator=generator).transpose(0, 1),
    ):  # not contiguous
        torch.testing.assert_close(onednn_linear(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(onednn_linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-4)


def test_the_choice_depends_on_size_dtype_and_gradients():
    weight = torch.zeros(1024, 1024)
    assert use_onednn_for(torch.zeros(1, 1024), weight)  # 2**20 multiply-adds: the threshold
    assert not use_onednn_for(torch.zeros(1, 1024), torch.zeros(1023, 1024))
    assert use_onednn_for(torch.zeros(2, 32, 1024), torch.zeros(16, 1024))  # rows count: 64 x 16 x 1024
    assert not use_onednn_for(torch.zeros(1, 1024, dtype=torch.bfloat16), weight.bfloat16())
    assert not use_onednn_for(torch.zeros(1, 1024, requires_grad=True), weight)  # autograd is recording
    with torch.no_grad():
        assert use_onednn_for(torch.zeros(1, 1024, requires_grad=True), weight)


def test_swap_keeps_parameters_names_and_the_tied_head(monkeypatch, configs, random_model):
    monkeypatch.setattr(fast_linear, "SWAP_MIN_WEIGHTS", 0)
    model = random_model(configs["grouped_query"])
    before = dict(model.named_parameters())
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert use_fast_linear(model) is model
    assert sum(type(m) is FastLinear for m in model.modules()) == linears > 0
    assert not any(type(m) is nn.Linear for m in model.modules())
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    head = model.language_model
    assert head.lm_head.weight is head.model.embed_tokens.weight


def test_only_large_layers_are_swapped():
    text = GemmaConfig(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
    )  # embedding 1024 x 256 = 2**18
    decoder = use_fast_linear(GemmaForCausalLM(text))
    swapped = {name for name, module in decoder.named_modules() if isinstance(module, FastLinear)}
    assert swapped == {
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
        "lm_head",
    }  # 1024 x 256 each; the attention projections (256 x 256, 128 x 256) stay


def test_swapped_model_matches_the_plain_one(config, monkeypatch, random_model, make_inputs):
    monkeypatch.setattr(fast_linear, "SWAP_MIN_WEIGHTS", 0)  # tiny models: swap every layer
    monkeypatch.setattr(fast_linear, "ONEDNN_MIN_MULTIPLY_ADDS", 0)  # and send every product to oneDNN
    calls = []
    monkeypatch.setattr(fast_linear, "onednn_linear", lambda *args: calls.append(1) or onednn_linear(*args))
    plain, swapped = random_model(config, seed=1), use_fast_linear(random_model(config, seed=1))
    inputs = make_inputs(config)
    with torch.no_grad():
        expected, ours = plain(**inputs), swapped(**inputs)
    assert calls  # oneDNN did run
    torch.testing.assert_close(ours.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, expected.loss, rtol=1e-5, atol=1e-6)
    batch = ProcessorBatch(
        inputs["input_ids"],
        inputs["attention_mask"],
        torch.zeros_like(inputs["input_ids"]),
        inputs["pixel_values"],
        None,
    )
    greedy = [torch.stack(list(generate_tokens(m, batch, max_new_tokens=6)), dim=1) for m in (plain, swapped)]
    assert torch.equal(*greedy)


def test_training_falls_back_to_f_linear(monkeypatch):
    monkeypatch.setattr(fast_linear, "ONEDNN_MIN_MULTIPLY_ADDS", 0)
    linear = nn.Linear(64, 32)
    swapped = FastLinear.from_linear(nn.Linear(64, 32))
    swapped.load_state_dict(linear.state_dict())
    x = torch.randn(4, 64)
    linear(x).square().sum().backward()
    swapped(x).square().sum().backward()
    assert torch.equal(swapped.weight.grad, linear.weight.grad) and torch.equal(swapped.bias.grad, linear.bias.grad)


def test_without_onednn_nothing_is_swapped(monkeypatch, configs, random_model):
    monkeypatch.setattr(fast_linear, "SWAP_MIN_WEIGHTS", 0)
    monkeypatch.setattr(fast_linear, "onednn_available", lambda: False)
    model = use_fast_linear(random_model(configs["multi_query"]))
    assert not any(isinstance(m, FastLinear) for m in model.modules())
