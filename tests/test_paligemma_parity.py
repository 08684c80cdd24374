"""PaliGemma end to end: parity with transformers, the KV cache, and input validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgemma.checkpoint import load_model
from pgemma.config import PaliGemmaConfig
from pgemma.kv_cache import KVCache
from pgemma.paligemma import PaliGemmaForConditionalGeneration


def test_logits_and_loss_match_transformers(config_name, config, reference_checkpoint, reference_model, make_inputs):
    model, hf_model = load_model(reference_checkpoint(config_name)), reference_model(config_name)
    inputs = make_inputs(config, seed=1, padding=(0, 3, 1))
    with torch.no_grad():
        ours = model(**inputs)
        theirs = hf_model(**inputs)
    # Every position, padding included: the padding rows follow the same rules as transformers'.
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    assert ours.logits.shape == (3, inputs["input_ids"].shape[1], config.text_config.vocab_size)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-6, atol=1e-6)


def test_compare_layers_finds_no_divergence(reference_checkpoint, reference_model, configs, make_inputs):
    from pgemma.reference import compare_layers, format_comparison

    name = "grouped_query"
    model, hf_model = load_model(reference_checkpoint(name)), reference_model(name)
    inputs = make_inputs(configs[name], seed=2)
    del inputs["labels"]
    table = compare_layers(model, hf_model, inputs)
    layers = configs[name].vision_config.num_hidden_layers, configs[name].text_config.num_hidden_layers
    assert list(table) == (
        ["patch_embeddings"]
        + [f"vision_layer_{i}" for i in range(layers[0])]
        + ["image_features", "decoder_input"]
        + [f"decoder_layer_{i}" for i in range(layers[1] - 1)]
        + ["final_norm", "logits"]
    )
    assert max(table.values()) <= 1e-5, format_comparison(table)


def test_compare_layers_points_at_the_broken_layer(reference_checkpoint, reference_model, configs, make_inputs):
    from pgemma.reference import compare_layers

    name = "grouped_query"
    model, hf_model = load_model(reference_checkpoint(name)), reference_model(name)
    with torch.no_grad():
        model.language_model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    inputs = make_inputs(configs[name], seed=2)
    del inputs["labels"]
    table = compare_layers(model, hf_model, inputs)
    assert table["decoder_layer_0"] <= 1e-5
    assert table["decoder_layer_1"] > 1e-3


def test_the_image_reaches_the_text(reference_checkpoint, configs, make_inputs):
    model = load_model(reference_checkpoint("multi_query"))
    inputs = make_inputs(configs["multi_query"], seed=3)
    del inputs["labels"]
    with torch.no_grad():
        logits = model(**inputs).logits
        inputs["pixel_values"] = inputs["pixel_values"].flip(-1)
        flipped = model(**inputs).logits
    assert (logits[:, -1] - flipped[:, -1]).abs().max() > 1e-4


def test_sdpa_path_matches_explicit_path(reference_checkpoint, configs, make_inputs):
    path = reference_checkpoint("grouped_query")
    explicit, fused = load_model(path), load_model(path, use_sdpa=True)
    inputs = make_inputs(configs["grouped_query"], seed=4)
    with torch.no_grad():
        a, b = explicit(**inputs).logits, fused(**inputs).logits
    real = inputs["attention_mask"].bool()  # padding queries see no key: their rows differ (see attention())
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-5)


def test_attention_weights_match_transformers(config_name, config, reference_checkpoint, reference_model, make_inputs):
    path = reference_checkpoint(config_name)
    model, hf_model = load_model(path), reference_model(config_name)
    inputs = make_inputs(config, seed=9, padding=(0, 3, 1))
    del inputs["labels"]
    with torch.no_grad():
        plain = model(**inputs)
        ours = model(**inputs, output_attentions=True)
        theirs = hf_model(**inputs, output_attentions=True).attentions
        vision = hf_model.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions
        with_sdpa = load_model(path, use_sdpa=True)(**inputs, output_attentions=True)
    assert plain.attentions is None
    assert torch.equal(ours.logits, plain.logits)  # asking for the weights changes no output
    batch, length = inputs["input_ids"].shape
    vision_config, text = config.vision_config, config.text_config
    assert len(ours.attentions.vision) == len(vision) == vision_config.num_hidden_layers
    assert len(ours.attentions.decoder) == len(theirs) == text.num_hidden_layers
    for a, b in zip(ours.attentions.vision, vision):
        assert a.shape == (batch, vision_config.num_attention_heads, config.num_image_tokens, config.num_image_tokens)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.attentions.decoder, theirs):  # padding rows included: uniform in both
        assert a.shape == (batch, text.num_attention_heads, length, length)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for weights in (*ours.attentions.vision, *ours.attentions.decoder):
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    # A model on SDPA forms the weights on the explicit path for that call: the same numbers.
    for a, b in zip(
        (*with_sdpa.attentions.vision, *with_sdpa.attentions.decoder),
        (*ours.attentions.vision, *ours.attentions.decoder),
    ):
        assert torch.equal(a, b)


def test_attention_weights_with_a_cache_cover_the_cached_keys(reference_checkpoint, configs, make_inputs):
    model = load_model(reference_checkpoint("grouped_query"))
    inputs = make_inputs(configs["grouped_query"], seed=10, suffix=2)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    length = ids.shape[1]
    with torch.no_grad():
        full = model(ids, inputs["pixel_values"], mask, output_attentions=True).attentions.decoder
        cache = KVCache.empty(model.config.text_config, ids.shape[0], length)
        cache = model(ids[:, :-1], inputs["pixel_values"], mask[:, :-1], kv_cache=cache).kv_cache
        step = model(ids[:, -1:], attention_mask=mask, kv_cache=cache, output_attentions=True).attentions
    assert step.vision == []  # no image in this call
    for a, b in zip(step.decoder, full):  # float[B, N, 1, S]: the last query over every key
        assert a.shape == (ids.shape[0], b.shape[1], 1, length)
        torch.testing.assert_close(a, b[:, :, -1:], rtol=1e-5, atol=1e-6)


def _decode_step_by_step(model, inputs, prompt_length: int) -> torch.Tensor:
    """Prefill the first `prompt_length` tokens, then feed the rest one token per row."""
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    cache = KVCache.empty(model.config.text_config, ids.shape[0], ids.shape[1])
    out = model(
        ids[:, :prompt_length],
        inputs["pixel_values"],
        mask[:, :prompt_length],
        types[:, :prompt_length],
        kv_cache=cache,
    )
    steps, cache = [out.logits], out.kv_cache
    for t in range(prompt_length, ids.shape[1]):
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], kv_cache=cache)
        steps.append(out.logits)
        cache = out.kv_cache
    assert cache.length == ids.shape[1]
    return torch.cat(steps, dim=1)


def test_cached_decoding_matches_full_recomputation(config_name, config, reference_checkpoint, make_inputs):
    model = load_model(reference_checkpoint(config_name))
    inputs = make_inputs(config, seed=5, padding=(2, 0), suffix=4)
    prompt_length = inputs["input_ids"].shape[1] - 4
    with torch.no_grad():
        full = model(**inputs).logits
        cached = _decode_step_by_step(model, inputs, prompt_length)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def test_cached_decoding_matches_transformers(reference_checkpoint, reference_model, configs, make_inputs):
    """The generation contract: one new token per row, attention_mask covering cache + new tokens."""
    name = "multi_query"
    model, hf_model = load_model(reference_checkpoint(name)), reference_model(name)
    inputs = make_inputs(configs[name], seed=6, padding=(0, 2), suffix=3)
    prompt_length = inputs["input_ids"].shape[1] - 3
    with torch.no_grad():
        theirs = hf_model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        ours = _decode_step_by_step(model, inputs, prompt_length)
    assert (ours - theirs).abs().max() <= 1e-5


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 3), prefix=st.integers(1, 6), suffix=st.integers(1, 5), data=st.data())
def test_cache_equals_recompute_property(batch, prefix, suffix, data, configs, random_model, make_inputs):
    config = configs[data.draw(st.sampled_from(sorted(configs)))]
    padding = tuple(data.draw(st.integers(0, prefix - 1)) for _ in range(batch))
    prompt_extra = data.draw(st.integers(0, suffix - 1))  # part of the suffix may be in the prompt
    model = random_model(config, seed=batch)
    inputs = make_inputs(config, seed=prefix, padding=padding, prefix=prefix, suffix=suffix)
    prompt_length = inputs["input_ids"].shape[1] - suffix + prompt_extra
    with torch.no_grad():
        full = model(**inputs).logits
        cached = _decode_step_by_step(model, inputs, prompt_length)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def test_output_shapes_and_names_mirror_the_hub():
    model = PaliGemmaForConditionalGeneration(PaliGemmaConfig.tiny())
    names = dict(model.named_parameters(remove_duplicate=False))
    for key in (
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight",
        "vision_tower.vision_model.post_layernorm.bias",
        "multi_modal_projector.linear.bias",
        "language_model.model.layers.1.self_attn.q_proj.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    ):
        assert key in names
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight
    assert model.num_image_tokens == 16
    assert PaliGemmaConfig.paligemma_3b_224().num_image_tokens == 256


@pytest.fixture(scope="module")
def tiny_model(random_model):
    return random_model(PaliGemmaConfig.tiny())


@pytest.fixture
def tiny_inputs(make_inputs):
    inputs = make_inputs(PaliGemmaConfig.tiny(), seed=7)
    del inputs["labels"]
    return inputs


def test_wrong_number_of_image_tokens_is_refused(tiny_model, tiny_inputs):
    tiny_inputs["input_ids"][0, 0] = 5  # one <image> token fewer in row 0
    with pytest.raises(ValueError, match=r"16 <image> tokens .*got \[15, 16\] per row for 2 image"):
        tiny_model(**tiny_inputs)


def test_image_tokens_without_pixels_are_refused(tiny_model, tiny_inputs):
    del tiny_inputs["pixel_values"]
    with pytest.raises(ValueError, match="32 <image> tokens but pixel_values is None"):
        tiny_model(**tiny_inputs)


def test_out_of_vocabulary_ids_are_refused(tiny_model, tiny_inputs):
    tiny_inputs["input_ids"][1, -1] = 256
    with pytest.raises(ValueError, match=r"must be in \[0, 256\).*to 256"):
        tiny_model(**tiny_inputs)


def test_sequence_longer_than_the_context_is_refused(tiny_model):
    ids = torch.full((1, 129), 3)
    with pytest.raises(ValueError, match="0 cached \\+ 129 new tokens exceed .*max_position_embeddings=128"):
        tiny_model(ids)


def test_too_many_tokens_for_the_cache_is_refused(tiny_model):
    cache = KVCache.empty(tiny_model.config.text_config, batch_size=1, max_length=4)
    with pytest.raises(ValueError, match="holds 4 tokens; 0 are stored and 5 more do not fit"):
        tiny_model(torch.full((1, 5), 3), kv_cache=cache)


def test_wrong_image_size_is_refused(tiny_model, tiny_inputs):
    tiny_inputs["pixel_values"] = torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(images, 3, 32, 32\), got \(2, 3, 64, 64\)"):
        tiny_model(**tiny_inputs)


def test_mismatched_mask_shapes_are_refused(tiny_model, tiny_inputs):
    tiny_inputs["attention_mask"] = tiny_inputs["attention_mask"][:, 1:]
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 25\), got \(2, 24\)"):
        tiny_model(**tiny_inputs)


def test_float_input_ids_are_refused(tiny_model):
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        tiny_model(torch.zeros(1, 4))


def test_cache_for_another_batch_size_is_refused(tiny_model):
    cache = KVCache.empty(tiny_model.config.text_config, batch_size=2, max_length=8)
    with pytest.raises(ValueError, match="batch size 2, input_ids has 1"):
        tiny_model(torch.full((1, 3), 3), kv_cache=cache)


def test_bfloat16_differs_from_transformers_5_only_by_where_the_image_is_scaled(
    reference_checkpoint, configs, make_inputs
):
    """transformers >= 5.4 no longer divides image features by sqrt(D) (see merge_image_and_text).

    With D = 64, sqrt(D) = 8 is a power of two and both orders round identically in bfloat16, so
    the logits are bit-identical; with D = 48 they differ by a few bfloat16 steps.
    """
    from pgemma.reference import load_reference_model

    for name, exact in (("multi_query", True), ("grouped_query", False)):
        inputs = make_inputs(configs[name], seed=8)
        del inputs["labels"]
        model = load_model(reference_checkpoint(name), dtype=torch.bfloat16)
        hf_model = load_reference_model(reference_checkpoint(name), dtype=torch.bfloat16)
        with torch.no_grad():
            ours, theirs = model(**inputs).logits, hf_model(**inputs).logits
        assert ours.dtype == theirs.dtype == torch.bfloat16
        assert torch.equal(ours, theirs) == exact, name
        assert (ours.float() - theirs.float()).abs().max() <= 0.02 * theirs.float().abs().max()
