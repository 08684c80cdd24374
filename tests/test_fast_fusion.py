"""Fused projections (pgemma.fast.fusion): the same numbers from fewer products, no extra memory, the same
Parameters, training unaffected."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgemma.config import GemmaConfig
from pgemma.fast import linear as fast_linear
from pgemma.fast.fusion import FusedGemmaAttention, FusedGemmaMLP, FusedProjections, fuse_projections, fused_projections
from pgemma.gemma import GemmaAttention, GemmaForCausalLM, GemmaMLP
from pgemma.generate import generate_tokens
from pgemma.processor import ProcessorBatch


def count_fused_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = FusedProjections.__call__
    monkeypatch.setattr(FusedProjections, "__call__", lambda self, x: calls.append(1) or original(self, x))
    return calls


def greedy(model, inputs: dict, new_tokens: int = 6, padded: bool = True) -> torch.Tensor:
    attention_mask = inputs["attention_mask"] if padded else torch.ones_like(inputs["attention_mask"])
    batch = ProcessorBatch(
        inputs["input_ids"], attention_mask, torch.zeros_like(inputs["input_ids"]), inputs["pixel_values"], None
    )
    return torch.stack(list(generate_tokens(model, batch, max_new_tokens=new_tokens)), dim=1)


def test_fused_model_computes_the_same_logits_and_tokens(config, monkeypatch, random_model, make_inputs):
    plain, fused = random_model(config, seed=1), fuse_projections(random_model(config, seed=1))
    calls = count_fused_calls(monkeypatch)
    inputs = make_inputs(config)
    with torch.no_grad():
        expected, ours = plain(**inputs), fused(**inputs)
    layers = config.text_config.num_hidden_layers
    assert len(calls) == 2 * layers  # q/k/v and gate/up of every layer, one product each
    # Each output is the same dot product over the same row of weights: equal bit for bit here.
    torch.testing.assert_close(ours.logits, expected.logits, rtol=1e-6, atol=1e-6)
    for padded in (True, False):  # without padding the decode steps run without a mask
        assert torch.equal(greedy(fused, inputs, padded=padded), greedy(plain, inputs, padded=padded))


def test_weights_become_views_no_parameter_or_key_changes(configs, random_model):
    config = configs["grouped_query"]
    model = random_model(config)
    parameters, state = dict(model.named_parameters()), model.state_dict()
    before = {key: value.clone() for key, value in state.items()}
    fuse_projections(model)
    after = dict(model.named_parameters())
    assert after.keys() == parameters.keys()
    assert all(after[name] is parameters[name] for name in parameters)  # the same Parameter objects
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    attention = model.language_model.model.layers[0].self_attn
    fused = attention.qkv
    assert fused.weight.shape == (
        attention.q_proj.out_features + 2 * attention.k_proj.out_features,
        config.text_config.hidden_size,
    )
    for layer in (attention.q_proj, attention.k_proj, attention.v_proj):  # no weight is stored twice
        assert layer.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
    assert len(fused_projections(model)) == 2 * config.text_config.num_hidden_layers


def test_training_uses_the_separate_layers_and_updates_the_fused_matrix(
    monkeypatch, configs, random_model, make_inputs
):
    config = configs["multi_head"]
    plain, fused = random_model(config, seed=2), fuse_projections(random_model(config, seed=2))
    calls = count_fused_calls(monkeypatch)
    inputs = make_inputs(config)
    for model in (plain, fused):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(**inputs).loss.backward()  # autograd records: the separate layers run
        optimizer.step()
    assert not calls
    for a, b in zip(plain.parameters(), fused.parameters()):
        assert torch.equal(a.grad, b.grad) and torch.equal(a, b)
    with torch.no_grad():  # the fused matrix saw the in-place update of its views
        torch.testing.assert_close(fused(**inputs).logits, plain(**inputs).logits, rtol=1e-6, atol=1e-6)
    assert calls


def test_moved_or_cast_weights_fall_back_to_the_separate_layers(monkeypatch, configs, random_model, make_inputs):
    config = configs["multi_query"]
    model = fuse_projections(random_model(config, seed=3)).double()  # the views are replaced by copies
    calls = count_fused_calls(monkeypatch)
    inputs = make_inputs(config)
    inputs["pixel_values"] = inputs["pixel_values"].double()
    with torch.no_grad():
        logits = model(**inputs).logits
    assert not calls and logits.dtype == torch.float64
    fuse_projections(model)  # fusing again after the cast
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, logits)
    assert calls


def test_only_small_groups_are_fused(configs, random_model):
    config = configs["grouped_query"]
    model = random_model(config)
    mlp = model.language_model.model.layers[0].mlp
    gate_up = mlp.gate_proj.weight.numel() + mlp.up_proj.weight.numel()
    fuse_projections(model, max_weights=gate_up - 1)
    layer = model.language_model.model.layers[0]
    assert type(layer.mlp) is GemmaMLP
    assert type(layer.self_attn) is FusedGemmaAttention  # smaller than gate/up
    # The default limit: 128 x 512 (the shipped model's size) is fused, 1024 x 1024 is not.
    for width, fused in ((128, True), (1024, False)):
        text = GemmaConfig(
            vocab_size=16,
            hidden_size=width,
            intermediate_size=width * 4 if fused else width,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
        )
        decoder = fuse_projections(GemmaForCausalLM(text))
        assert isinstance(decoder.model.layers[0].mlp, FusedGemmaMLP) == fused


def test_layers_that_cannot_be_fused_are_refused():
    with pytest.raises(ValueError, match="without bias"):
        FusedProjections([nn.Linear(4, 3), nn.Linear(4, 3, bias=False)])
    with pytest.raises(ValueError, match=r"same input width, got \[4, 5\]"):
        FusedProjections([nn.Linear(4, 3, bias=False), nn.Linear(5, 3, bias=False)])


@pytest.mark.skipif(not fast_linear.onednn_available(), reason="this PyTorch build has no oneDNN")
def test_use_fast_linear_sends_large_fused_products_to_linear(monkeypatch, configs, random_model):
    monkeypatch.setattr(fast_linear, "SWAP_MIN_WEIGHTS", 0)
    model = fast_linear.use_fast_linear(fuse_projections(random_model(configs["grouped_query"])))
    assert all(fused.linear is fast_linear.linear for fused in fused_projections(model))
    plain = fuse_projections(random_model(configs["grouped_query"]))
    assert all(fused.linear is F.linear for fused in fused_projections(plain))


def test_loading_weights_into_a_fused_model_reaches_the_fused_matrix(monkeypatch, configs, random_model, make_inputs):
    config = configs["grouped_query"]
    fused, other = fuse_projections(random_model(config, seed=5)), random_model(config, seed=6)
    calls = count_fused_calls(monkeypatch)
    inputs = make_inputs(config)
    fused.load_state_dict(other.state_dict())  # copies into the Parameters in place: into the views
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).logits, other(**inputs).logits, rtol=1e-6, atol=1e-6)
    assert calls
    calls.clear()
    fused.load_state_dict(random_model(config, seed=7).state_dict(), assign=True)  # new Parameters: no views
    with torch.no_grad():
        torch.testing.assert_close(
            fused(**inputs).logits, random_model(config, seed=7)(**inputs).logits, rtol=1e-6, atol=1e-6
        )
    assert not calls


def test_the_fused_modules_are_the_reference_modules_with_one_step_overridden(configs, random_model):
    config = configs["grouped_query"]
    model = random_model(config)
    layer = model.language_model.model.layers[0]
    attention, mlp = layer.self_attn, layer.mlp
    children = {name: child for name, child in [*attention.named_children(), *mlp.named_children()]}
    fuse_projections(model)
    assert isinstance(layer.self_attn, GemmaAttention) and isinstance(layer.mlp, GemmaMLP)
    assert {name for name in vars(FusedGemmaAttention) if not name.startswith("__")} == {"from_attention", "project"}
    assert {name for name in vars(FusedGemmaMLP) if not name.startswith("__")} == {"from_mlp", "gate_and_up"}
    for name, child in [*layer.self_attn.named_children(), *layer.mlp.named_children()]:
        assert child is children[name]  # the same layers, holding the same Parameters
    assert not layer.self_attn.training and layer.self_attn.use_sdpa == attention.use_sdpa
    assert not any(p.is_meta for p in model.parameters())
    x = torch.randn(2, 5, config.text_config.hidden_size)
    with torch.no_grad():  # each step gives the reference step's tensors
        for ours, reference in zip(layer.self_attn.project(x), GemmaAttention.project(layer.self_attn, x)):
            assert ours.shape == reference.shape
            torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
        for ours, reference in zip(layer.mlp.gate_and_up(x), GemmaMLP.gate_and_up(layer.mlp, x)):
            torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_an_optimizer_made_before_fusing_still_trains_the_model(monkeypatch, configs, random_model, make_inputs):
    config = configs["multi_head"]
    plain, fused = random_model(config, seed=4), random_model(config, seed=4)
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1) for model in (plain, fused)]
    fuse_projections(fused)
    calls = count_fused_calls(monkeypatch)
    inputs = make_inputs(config)
    for model, optimizer in zip((plain, fused), optimizers):
        model(**inputs).loss.backward()
        optimizer.step()
    with torch.no_grad():  # the step reached the stacked matrices through the Parameters it holds
        torch.testing.assert_close(fused(**inputs).logits, plain(**inputs).logits, rtol=1e-6, atol=1e-6)
    assert calls
