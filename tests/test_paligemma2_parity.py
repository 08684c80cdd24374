"""PaliGemma 2 (a Gemma 2 decoder) end to end: parity with transformers past the sliding window, with
padding, the KV cache and greedy generation."""

from dataclasses import replace

import pytest
import torch

from pgemma.checkpoint import load_model, save_pretrained
from pgemma.gemma2 import Gemma2DecoderLayer, Gemma2ForCausalLM
from pgemma.generate import generate_tokens
from pgemma.kv_cache import KVCache
from pgemma.masks import decoder_mask
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import ProcessorBatch

NAMES = ["gemma2_multi_query", "gemma2_grouped_query"]


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


def test_a_gemma2_checkpoint_loads_as_gemma2(name, reference_checkpoint, paligemma2_configs):
    model = load_model(reference_checkpoint(name))
    assert model.config == paligemma2_configs[name]
    assert isinstance(model.language_model, Gemma2ForCausalLM)
    layer = model.language_model.model.layers[0]
    assert isinstance(layer, Gemma2DecoderLayer)
    names = {key for key, _ in layer.named_parameters()}
    assert {"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"} <= names


def test_pgemma_saved_paligemma2_loads_in_transformers(
    reference_checkpoint, reference_model, paligemma2_configs, make_inputs, tmp_path
):
    """save_pretrained writes a gemma2 config.json that transformers reads back to the same model."""
    from pgemma.reference import load_reference_model

    name = "gemma2_grouped_query"
    save_pretrained(load_model(reference_checkpoint(name)), tmp_path)
    inputs = make_inputs(paligemma2_configs[name], seed=11)
    with torch.no_grad():
        reloaded, original = load_reference_model(tmp_path)(**inputs).logits, reference_model(name)(**inputs).logits
    assert torch.equal(reloaded, original)
    assert load_model(tmp_path).config == paligemma2_configs[name]


def test_logits_and_loss_match_transformers(
    name, reference_checkpoint, reference_model, paligemma2_configs, make_inputs
):
    config = paligemma2_configs[name]
    model, hf_model = load_model(reference_checkpoint(name)), reference_model(name)
    inputs = make_inputs(config, seed=1, padding=(0, 3, 1))
    assert inputs["input_ids"].shape[1] > 4 * config.text_config.sliding_window
    with torch.no_grad():
        ours = model(**inputs)
        theirs = hf_model(**inputs)
    # Every position, padding included.
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-6, atol=1e-6)
    assert ours.logits.abs().max() < config.text_config.final_logit_softcapping


def test_compare_layers_finds_no_divergence(reference_checkpoint, reference_model, paligemma2_configs, make_inputs):
    from pgemma.reference import compare_layers, format_comparison

    name = "gemma2_grouped_query"
    model, hf_model = load_model(reference_checkpoint(name)), reference_model(name)
    inputs = make_inputs(paligemma2_configs[name], seed=2)
    del inputs["labels"]
    table = compare_layers(model, hf_model, inputs)
    assert max(table.values()) <= 1e-5, format_comparison(table)


def test_attention_weights_match_transformers(
    name, reference_checkpoint, reference_model, paligemma2_configs, make_inputs
):
    config = paligemma2_configs[name]
    model, hf_model = load_model(reference_checkpoint(name)), reference_model(name)
    inputs = make_inputs(config, seed=9, padding=(0, 3, 1))
    del inputs["labels"]
    with torch.no_grad():
        ours = model(**inputs, output_attentions=True).attentions.decoder
        theirs = hf_model(**inputs, output_attentions=True).attentions
    assert len(ours) == len(theirs) == config.text_config.num_hidden_layers
    for index, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        # A suffix query (the last one) sees exactly the last W keys in a sliding layer, more in a full one.
        seen = int((a[0, 0, -1] > 0).sum())
        if config.text_config.is_sliding(index):
            assert seen == config.text_config.sliding_window
        else:
            assert seen > config.text_config.sliding_window


def test_the_sliding_window_and_the_caps_change_the_logits(reference_checkpoint, paligemma2_configs, make_inputs):
    """Each of Gemma 2's numbers matters on these inputs: a parity test would catch a wrong one."""
    name = "gemma2_multi_query"
    config = paligemma2_configs[name]
    path = reference_checkpoint(name)
    inputs = make_inputs(config, seed=3)
    del inputs["labels"]
    model = load_model(path)
    with torch.no_grad():
        logits = model(**inputs).logits
        for change in (
            {"sliding_window": 1000},
            {"attn_logit_softcapping": None},
            {"final_logit_softcapping": None},
            {"query_pre_attn_scalar": 16},
        ):
            other = PaliGemmaForConditionalGeneration(
                replace(config, text_config=replace(config.text_config, **change))
            )
            other.load_state_dict(model.state_dict())
            assert (other.eval()(**inputs).logits - logits).abs().max() > 1e-4, change


def prefill(model, config, inputs):
    """Run the prompt (image + prefix) into an empty cache: (its output, prompt length, every position)."""
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    batch, length = ids.shape
    prompt = int((types == 0).sum(dim=1).min())
    cache = KVCache.empty(config.text_config, batch, length)
    output = model(ids[:, :prompt], inputs["pixel_values"], mask[:, :prompt], types[:, :prompt], kv_cache=cache)
    return output, prompt, torch.arange(length)[None] + 1


def decoded_logits(model, config, inputs):
    """Prefill, then one token at a time: the logits at positions prompt - 1 ... length - 2, and prompt."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    output, prompt, positions = prefill(model, config, inputs)
    steps = [output.logits[:, -1]]
    for t in range(prompt, ids.shape[1]):
        output = model.decode_step(ids[:, t : t + 1], mask[:, : t + 1], positions[:, t : t + 1], output.kv_cache)
        steps.append(output.logits[:, -1])
    return torch.stack(steps[:-1], dim=1), prompt


def test_cached_decoding_equals_recomputation_past_the_window(
    name, reference_checkpoint, paligemma2_configs, make_inputs
):
    """Prefill the prompt, then decode token by token far past the window; compare with one full forward."""
    config = paligemma2_configs[name]
    model = load_model(reference_checkpoint(name))
    inputs = make_inputs(config, seed=4, suffix=3 * config.text_config.sliding_window)
    with torch.no_grad():
        full = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], inputs["token_type_ids"])
        cached, prompt = decoded_logits(model, config, inputs)
    torch.testing.assert_close(cached, full.logits[:, prompt - 1 : -1], rtol=1e-5, atol=1e-5)


def test_a_chunk_after_a_windowed_cache_equals_recomputation(
    name, reference_checkpoint, paligemma2_configs, make_inputs
):
    """Several new tokens at once after the cache: each sliding layer's mask keeps its cache's last columns."""
    config = paligemma2_configs[name]
    window = config.text_config.sliding_window
    model = load_model(reference_checkpoint(name))
    inputs = make_inputs(config, seed=7, suffix=3 * window)
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    length = ids.shape[1]
    with torch.no_grad():
        full = model(ids, inputs["pixel_values"], mask, types).logits
        output, prompt, positions = prefill(model, config, inputs)
        pieces = [output.logits]
        for start in range(prompt, length, window + 1):  # chunks longer than the window
            end = min(start + window + 1, length)
            chunk = (ids[:, start:end], None, mask[:, :end], types[:, start:end], positions[:, start:end])
            output = model(*chunk, kv_cache=output.kv_cache)
            pieces.append(output.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    text = config.text_config
    slots = [keys.shape[2] for keys in output.kv_cache.keys]
    assert slots == [window if text.is_sliding(i) else length for i in range(text.num_hidden_layers)]


def test_decode_step_without_padding_still_slides(reference_checkpoint, paligemma2_configs, make_inputs):
    """With no padding the full layers need no mask, the sliding ones still do."""
    name = "gemma2_multi_query"
    config = paligemma2_configs[name]
    model = load_model(reference_checkpoint(name))
    inputs = make_inputs(config, seed=5, padding=(0, 0), suffix=0)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    batch, length = ids.shape
    new = torch.tensor([[7], [9]])
    with torch.no_grad():
        full = model(torch.cat([ids, new], dim=1), pixels).logits[:, -1]
        prefill = model(ids, pixels, kv_cache=KVCache.empty(config.text_config, batch, length + 1))
        step = model.decode_step(new, None, torch.full((batch, 1), length + 1), prefill.kv_cache).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_matches_transformers_generate(
    name, reference_checkpoint, reference_model, paligemma2_configs, make_inputs
):
    config = paligemma2_configs[name]
    model, hf_model = load_model(reference_checkpoint(name)), reference_model(name)
    inputs = make_inputs(config, seed=6, padding=(0, 3), suffix=0)  # a prompt: image + prefix, one row padded
    batch = ProcessorBatch(
        inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], inputs["pixel_values"], None
    )
    new_tokens = 3 * config.text_config.sliding_window
    with torch.no_grad():
        expected = hf_model.generate(
            input_ids=batch.input_ids,
            pixel_values=batch.pixel_values,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # transformers would stop at <eos>; we compare every step
        )[:, batch.input_ids.shape[1] :]
    ours = torch.stack(list(generate_tokens(model, batch, max_new_tokens=new_tokens)), dim=1)
    assert torch.equal(ours[:, :new_tokens], expected)
    assert len(expected.unique()) > 1  # not one token repeated: the comparison says something


def test_sdpa_model_matches_the_explicit_one(name, reference_checkpoint, paligemma2_configs, make_inputs):
    """SDPA runs the layers without an attention soft-cap; the capped ones stay on the explicit path."""
    path = reference_checkpoint(name)
    explicit, fused = load_model(path), load_model(path, use_sdpa=True)
    inputs = make_inputs(paligemma2_configs[name], seed=4)
    with torch.no_grad():
        a, b = explicit(**inputs).logits, fused(**inputs).logits
    real = inputs["attention_mask"].bool()  # padding queries see no key: their rows differ (see attention())
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-5)


def test_a_decoder_without_the_sliding_mask_is_refused(paligemma2_configs):
    text = paligemma2_configs["gemma2_multi_query"].text_config
    decoder = Gemma2ForCausalLM(text).eval()
    embeds, positions = torch.zeros(1, 5, text.hidden_size), torch.arange(5)[None]
    with pytest.raises(ValueError, match="5 keys exceed the sliding window of 4: pass sliding_mask"):
        decoder(embeds, decoder_mask(5, 5), positions)
    decoder(embeds[:, :4], decoder_mask(4, 4), positions[:, :4])  # within the window: no need


def test_bfloat16_matches_transformers_bit_for_bit(reference_checkpoint, paligemma2_configs, make_inputs):
    from pgemma.reference import load_reference_model

    name = "gemma2_multi_query"
    inputs = make_inputs(paligemma2_configs[name], seed=8)
    del inputs["labels"]
    model = load_model(reference_checkpoint(name), dtype=torch.bfloat16)
    hf_model = load_reference_model(reference_checkpoint(name), dtype=torch.bfloat16)
    with torch.no_grad():
        ours, theirs = model(**inputs).logits, hf_model(**inputs).logits
    assert ours.dtype == theirs.dtype == torch.bfloat16
    # D = 64: sqrt(D) is a power of two, so where the image is scaled rounds the same (see the
    # PaliGemma 1 test): bit-identical.
    assert torch.equal(ours, theirs)


def test_a_window_longer_than_the_sequence_matches_transformers(
    reference_checkpoint, reference_model, paligemma2_configs, make_inputs
):
    """Multi-head attention, both soft-caps, and a window no sequence reaches: sliding layers see it all."""
    name = "gemma2_wide_window"
    config = paligemma2_configs[name]
    model, hf_model = load_model(reference_checkpoint(name)), reference_model(name)
    inputs = make_inputs(config, seed=5, padding=(0, 2), suffix=8)
    assert inputs["input_ids"].shape[1] < config.text_config.sliding_window
    with torch.no_grad():
        ours, theirs = model(**inputs), hf_model(**inputs)
        cached, prompt = decoded_logits(model, config, inputs)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cached, ours.logits[:, prompt - 1 : -1], rtol=1e-5, atol=1e-5)
