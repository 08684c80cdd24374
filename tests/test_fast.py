"""prepare_for_speed (pgemma.fast): every speed-up at once gives the reference model's logits and tokens."""

import pytest
import torch

from pgemma.fast import compiled, prepare_for_speed
from pgemma.fast import linear as fast_linear
from pgemma.fast.fusion import FusedGemmaAttention, FusedGemmaMLP
from pgemma.fast.linear import FastLinear
from pgemma.gemma import GemmaAttention
from pgemma.generate import generate_tokens
from pgemma.processor import ProcessorBatch
from pgemma.siglip import SiglipAttention


def greedy(model, inputs: dict, padded: bool) -> torch.Tensor:
    attention_mask = inputs["attention_mask"] if padded else torch.ones_like(inputs["attention_mask"])
    batch = ProcessorBatch(
        inputs["input_ids"], attention_mask, torch.zeros_like(inputs["input_ids"]), inputs["pixel_values"], None
    )
    return torch.stack(list(generate_tokens(model, batch, max_new_tokens=6)), dim=1)


def test_prepared_model_gives_the_reference_logits_and_greedy_tokens(config, monkeypatch, random_model, make_inputs):
    monkeypatch.setattr(fast_linear, "SWAP_MIN_WEIGHTS", 0)  # tiny models: swap every layer
    monkeypatch.setattr(fast_linear, "ONEDNN_MIN_MULTIPLY_ADDS", 0)  # and send every product to oneDNN
    reference, model = random_model(config, seed=1), random_model(config, seed=1)
    parameters = dict(model.named_parameters())
    assert prepare_for_speed(model) is model
    after = dict(model.named_parameters())
    assert after.keys() == parameters.keys() and all(after[key] is parameters[key] for key in parameters)
    attentions = [m for m in model.modules() if isinstance(m, (GemmaAttention, SiglipAttention))]
    assert len(attentions) == config.vision_config.num_hidden_layers + config.text_config.num_hidden_layers
    assert all(m.use_sdpa for m in attentions)  # PyTorch's fused kernel in both towers
    layers = model.language_model.model.layers
    assert all(
        isinstance(layer.self_attn, FusedGemmaAttention) and isinstance(layer.mlp, FusedGemmaMLP) for layer in layers
    )
    assert any(isinstance(m, FastLinear) for m in model.modules()) == fast_linear.onednn_available()
    inputs = make_inputs(config)
    with torch.no_grad():
        expected, ours = reference(**inputs), model(**inputs)
    real = inputs["attention_mask"].bool()  # padding queries see no key: SDPA's rows differ there (see attention())
    torch.testing.assert_close(ours.logits[real], expected.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, expected.loss, rtol=1e-5, atol=1e-6)
    for padded in (True, False):  # without padding the decode steps run without a mask
        assert torch.equal(greedy(model, inputs, padded), greedy(reference, inputs, padded))


@pytest.mark.parametrize("name", ["gemma2_multi_query", "gemma2_grouped_query"])
def test_prepared_paligemma2_model_keeps_its_scale_and_caps(name, paligemma2_configs, random_model, make_inputs):
    """Fused Gemma 2 attention keeps query_pre_attn_scalar and the soft-cap (which SDPA cannot apply)."""
    config = paligemma2_configs[name]
    reference, model = random_model(config, seed=1), prepare_for_speed(random_model(config, seed=1))
    layers = model.language_model.model.layers
    assert all(isinstance(layer.self_attn, FusedGemmaAttention) for layer in layers)
    inputs = make_inputs(config)
    with torch.no_grad():
        expected, ours = reference(**inputs), model(**inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours.logits[real], expected.logits[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(greedy(model, inputs, True), greedy(reference, inputs, True))


def test_the_decoder_is_compiled_only_when_asked(monkeypatch, configs, random_model):
    compiled_models = []
    monkeypatch.setattr(compiled, "compile_decoder", compiled_models.append)
    model = random_model(configs["multi_query"])
    prepare_for_speed(model)
    assert compiled_models == []
    prepare_for_speed(model, compile_decoder=True)
    assert compiled_models == [model]


def test_compiling_without_a_cpp_compiler_says_so(monkeypatch, configs, random_model):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"compile_decoder needs a C\+\+ compiler"):
        prepare_for_speed(random_model(configs["multi_query"]), compile_decoder=True)
