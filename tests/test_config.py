"""Configs: the real numbers, config.json in and out (checked against transformers), clear errors."""

import dataclasses
import json
import math

import pytest

from pgemma.config import (
    FULL_ATTENTION,
    SLIDING_ATTENTION,
    Gemma2Config,
    GemmaConfig,
    PaliGemmaConfig,
    SiglipVisionConfig,
    load_config,
)

# google/paligemma-3b-pt-224's config.json as published on the hub (transformers 4.41 era).
HUB_3B_224 = {
    "architectures": ["PaliGemmaForConditionalGeneration"],
    "bos_token_id": 2,
    "eos_token_id": 1,
    "hidden_size": 2048,
    "ignore_index": -100,
    "image_token_index": 257152,
    "model_type": "paligemma",
    "pad_token_id": 0,
    "projection_dim": 2048,
    "torch_dtype": "float32",
    "transformers_version": "4.41.0.dev0",
    "text_config": {
        "hidden_size": 2048,
        "intermediate_size": 16384,
        "model_type": "gemma",
        "num_attention_heads": 8,
        "num_hidden_layers": 18,
        "num_image_tokens": 256,
        "num_key_value_heads": 1,
        "torch_dtype": "float32",
        "vocab_size": 257216,
    },
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "num_image_tokens": 256,
        "patch_size": 14,
        "projection_dim": 2048,
        "projector_hidden_act": "gelu_fast",
        "vision_use_head": False,
    },
}


def test_3b_preset_has_the_real_numbers():
    config = PaliGemmaConfig.paligemma_3b_224()
    vision, text = config.vision_config, config.text_config
    assert (
        vision.hidden_size,
        vision.num_hidden_layers,
        vision.num_attention_heads,
        vision.intermediate_size,
        vision.image_size,
        vision.patch_size,
    ) == (1152, 27, 16, 4304, 224, 14)
    assert (
        text.hidden_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.num_key_value_heads,
        text.head_dim,
        text.intermediate_size,
        text.vocab_size,
    ) == (2048, 18, 8, 1, 256, 16384, 257216)
    assert config.num_image_tokens == 256 and config.image_token_index == 257152


def test_tiny_preset_keeps_the_structure():
    config = PaliGemmaConfig.tiny()
    assert config.text_config.num_key_value_heads == 1  # multi-query, like the real model
    assert config.num_image_tokens == 16 and config.image_token_index < config.text_config.vocab_size


def test_hub_config_json_reads_as_the_3b_preset():
    assert PaliGemmaConfig.from_hf_dict(HUB_3B_224) == PaliGemmaConfig.paligemma_3b_224()


def test_round_trip_through_hf_dict(config):
    assert PaliGemmaConfig.from_hf_dict(config.to_hf_dict()) == config


def _from_transformers(hf) -> PaliGemmaConfig:
    """Our config from the values transformers settled on, read attribute by attribute."""
    vision = {f.name: getattr(hf.vision_config, f.name) for f in dataclasses.fields(SiglipVisionConfig)}
    text = {f.name: getattr(hf.text_config, f.name) for f in dataclasses.fields(GemmaConfig) if f.name != "rope_theta"}
    text["rope_theta"] = hf.text_config.rope_parameters["rope_theta"]
    # The special ids live at the top level in most files, otherwise in text_config only.
    special = {}
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(hf, key, None)
        special[key] = getattr(hf.text_config, key) if value is None else value
    return PaliGemmaConfig(
        SiglipVisionConfig(**vision),
        GemmaConfig(**text),
        projection_dim=hf.projection_dim,
        image_token_index=hf.image_token_index,
        **special,
    )


@pytest.mark.parametrize(
    "config_json",
    [
        HUB_3B_224,
        {"model_type": "paligemma"},
        {
            "model_type": "paligemma",
            "image_token_index": 255999,
            "projection_dim": 3072,
            "text_config": {"model_type": "gemma"},
            "vision_config": {"vision_use_head": False},
        },
        {
            "model_type": "paligemma",
            "image_token_index": 100,
            "projection_dim": 64,
            "text_config": {"hidden_size": 64, "vocab_size": 128, "rope_theta": 500.0, "hidden_act": "gelu"},
            "vision_config": {"vision_use_head": False, "image_size": 32, "patch_size": 8},
        },
        PaliGemmaConfig.tiny().to_hf_dict(),
    ],
    ids=["hub_3b", "empty", "class_defaults", "legacy_keys", "tiny"],
)
def test_missing_fields_are_filled_as_transformers_does(config_json):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PaliGemmaConfig.from_dict(config_json)
    assert PaliGemmaConfig.from_hf_dict(config_json) == _from_transformers(hf)


@pytest.mark.parametrize(
    "config_json, error, message",
    [
        ({"model_type": "llava"}, ValueError, "model_type must be 'paligemma', got 'llava'"),
        (
            {"model_type": "paligemma", "text_config": {"model_type": "gemma3"}},
            ValueError,
            "'gemma' \\(PaliGemma 1\\) or 'gemma2' \\(PaliGemma 2\\), got 'gemma3'",
        ),
        ({"model_type": "paligemma", "vision_config": {}}, ValueError, "vision_use_head must be false"),
        ({"model_type": "paligemma", "text_config": {"hidden_act": "relu"}}, ValueError, "hidden_act must be"),
        (
            {"model_type": "paligemma", "text_config": {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}},
            ValueError,
            "only the default RoPE",
        ),
        (
            {"model_type": "paligemma", "text_config": {"num_hidden_layers": "18"}},
            TypeError,
            r"text_config.num_hidden_layers must be an int, got '18'",
        ),
        (
            {"model_type": "paligemma", "image_token_index": 300000},
            ValueError,
            r"image_token_index \(300000\) must be in \[0, text_config.vocab_size=257152\)",
        ),
        ([], TypeError, "config must be a dict"),
    ],
)
def test_bad_config_json_is_refused(config_json, error, message):
    with pytest.raises(error, match=message):
        PaliGemmaConfig.from_hf_dict(config_json)


def test_a_stated_number_of_image_tokens_must_match_the_sizes():
    config_json = PaliGemmaConfig.tiny().to_hf_dict()
    config_json["vision_config"]["num_image_tokens"] = 9
    with pytest.raises(
        ValueError,
        match=r"vision_config.num_image_tokens 9 != \(image_size 32 // patch_size 8\) "
        r"\*\* 2 = 16",
    ):
        PaliGemmaConfig.from_hf_dict(config_json)


def test_load_config_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="no config.json in .*; is it a PaliGemma checkpoint folder"):
        load_config(tmp_path)
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_config(tmp_path)
    path.write_text(json.dumps({"model_type": "paligemma", "text_config": {"num_hidden_layers": "18"}}))
    with pytest.raises(TypeError, match=r"config\.json: text_config.num_hidden_layers must be an int"):
        load_config(tmp_path)
    path.write_text(json.dumps(PaliGemmaConfig.tiny().to_hf_dict()))
    assert load_config(tmp_path) == PaliGemmaConfig.tiny()


def test_inconsistent_sizes_are_refused():
    with pytest.raises(ValueError, match=r"image_size \(30\) must be divisible by patch_size \(8\)"):
        SiglipVisionConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match=r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"):
        SiglipVisionConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"num_attention_heads \(8\) must be divisible by num_key_value_heads \(3\)"):
        GemmaConfig(num_attention_heads=8, num_key_value_heads=3)
    with pytest.raises(ValueError, match="head_dim must be even"):
        GemmaConfig(head_dim=15)
    with pytest.raises(ValueError, match="text_config.num_hidden_layers must be positive, got 0"):
        GemmaConfig(num_hidden_layers=0)
    with pytest.raises(ValueError, match=r"projection_dim \(2048\) must equal text_config.hidden_size \(64\)"):
        PaliGemmaConfig(text_config=GemmaConfig.tiny(), image_token_index=3)
    with pytest.raises(ValueError, match="16 image tokens leave no room for text"):
        PaliGemmaConfig(
            SiglipVisionConfig.tiny(),
            dataclasses.replace(GemmaConfig.tiny(), max_position_embeddings=16),
            projection_dim=64,
            image_token_index=255,
        )


def test_special_token_ids_may_live_in_text_config():
    config_json = {**PaliGemmaConfig.tiny().to_hf_dict()}
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        del config_json[key]
    config_json["text_config"] = {**config_json["text_config"], "pad_token_id": 5, "eos_token_id": 6, "bos_token_id": 7}
    config = PaliGemmaConfig.from_hf_dict(config_json)
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (5, 6, 7)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PaliGemmaConfig.tiny().text_config.hidden_size = 8


# Every number of every config is checked: type (a bool is not an int), finiteness and range.
NUMERIC_FIELDS = [
    *(("vision_config", f.name, f.type) for f in dataclasses.fields(SiglipVisionConfig)),
    *(("text_config", f.name, f.type) for f in dataclasses.fields(GemmaConfig)),
    *((None, f.name, f.type) for f in dataclasses.fields(PaliGemmaConfig) if f.type in ("int", "float")),
]


def _bad_values(kind: str, name: str) -> list:
    values = [math.nan, math.inf, -math.inf, True, False, -1, "7", [1]]
    if kind == "int":
        values += [0.5, 2.0] + ([] if name.endswith(("_id", "_index")) else [0])
    else:
        values += [0, -1e-6] + ([1.0, 10] if name.endswith("_eps") else [])
    return values


@pytest.mark.parametrize(
    "part, name, value",
    [(part, name, value) for part, name, kind in NUMERIC_FIELDS for value in _bad_values(kind, name)],
    ids=lambda x: repr(x) if not isinstance(x, str) else x,
)
def test_every_bad_number_in_config_json_is_refused_naming_field_value_and_file(part, name, value, tmp_path):
    config_json = PaliGemmaConfig.tiny().to_hf_dict()
    if part == "text_config" and name == "rope_theta":
        del config_json["text_config"]["rope_parameters"]  # else it would stand for rope_theta
    (config_json if part is None else config_json[part])[name] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_json))  # NaN and Infinity as Python's json writes and reads them
    with pytest.raises((TypeError, ValueError)) as error:
        load_config(tmp_path)
    message = str(error.value)
    assert str(path) in message and (f"{part}.{name}" if part else name) in message
    assert repr(value) in message or str(value) in message, message


def test_nan_in_rope_parameters_and_disagreeing_rope_thetas_are_refused(tmp_path):
    config_json = PaliGemmaConfig.tiny().to_hf_dict()
    config_json["text_config"]["rope_parameters"]["rope_theta"] = math.nan
    del config_json["text_config"]["rope_theta"]
    with pytest.raises(ValueError, match="text_config.rope_theta must be a finite positive number, got nan"):
        PaliGemmaConfig.from_hf_dict(config_json)
    config_json["text_config"]["rope_parameters"]["rope_theta"] = 500.0
    config_json["text_config"]["rope_theta"] = 10000.0
    with pytest.raises(ValueError, match=r"rope_theta \(10000.0\) and text_config.rope_parameters.rope_theta \(500"):
        PaliGemmaConfig.from_hf_dict(config_json)


def test_nan_literals_of_a_real_file_are_refused(tmp_path):
    text = json.dumps(HUB_3B_224).replace('"hidden_size": 1152', '"hidden_size": 1152, "layer_norm_eps": NaN')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"config\.json: vision_config.layer_norm_eps must be a finite positive"):
        load_config(tmp_path)
    text = json.dumps(HUB_3B_224).replace('"vocab_size": 257216', '"vocab_size": 257216, "rms_norm_eps": Infinity')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="text_config.rms_norm_eps must be a finite positive number, got inf"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: GemmaConfig(hidden_size=True), TypeError, "text_config.hidden_size must be an int, got True"),
        (lambda: GemmaConfig(head_dim=16.0), TypeError, "text_config.head_dim must be an int, got 16.0"),
        (lambda: GemmaConfig(rms_norm_eps=math.nan), ValueError, "rms_norm_eps must be a finite positive number"),
        (lambda: GemmaConfig(rms_norm_eps=1.0), ValueError, "rms_norm_eps must be a small positive number below 1"),
        (lambda: GemmaConfig(rope_theta=-math.inf), ValueError, "rope_theta must be a finite positive number"),
        (lambda: GemmaConfig(rope_theta=False), TypeError, "text_config.rope_theta must be a number, got False"),
        (lambda: SiglipVisionConfig(num_channels=True), TypeError, "vision_config.num_channels must be an int"),
        (lambda: SiglipVisionConfig(layer_norm_eps=0), ValueError, "layer_norm_eps must be a finite positive"),
        (lambda: PaliGemmaConfig(pad_token_id=True), TypeError, "pad_token_id must be an int, got True"),
        (lambda: PaliGemmaConfig(eos_token_id=-1), ValueError, r"eos_token_id \(-1\) must be in \[0, "),
        (lambda: PaliGemmaConfig(projection_dim=2048.0), TypeError, "projection_dim must be an int, got 2048.0"),
        (lambda: PaliGemmaConfig(pad_token_id=257152), ValueError, "image_token_index and pad_token_id are both"),
        (lambda: PaliGemmaConfig(text_config={}), TypeError, "text_config must be a GemmaConfig, got {}"),
    ],
)
def test_configs_check_their_numbers_when_built(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_a_large_context_is_a_valid_config():
    config = GemmaConfig(max_position_embeddings=10**9, rope_theta=1e6, rms_norm_eps=1e-5)
    assert config.max_position_embeddings == 10**9


def test_paligemma2_round_trip_through_hf_dict(paligemma2_configs):
    for config in paligemma2_configs.values():
        config_json = config.to_hf_dict()
        assert config_json["text_config"]["model_type"] == "gemma2"
        assert PaliGemmaConfig.from_hf_dict(json.loads(json.dumps(config_json))) == config


def test_missing_gemma2_fields_are_filled_as_transformers_does():
    transformers = pytest.importorskip("transformers")
    config_json = {
        "model_type": "paligemma",
        "projection_dim": 2304,  # Gemma 2 2B's width
        "vision_config": {"vision_use_head": False},
        "text_config": {"model_type": "gemma2", "vocab_size": 257216},  # room for the image token
    }
    hf_text = transformers.PaliGemmaConfig.from_dict(config_json).text_config
    text = PaliGemmaConfig.from_hf_dict(config_json).text_config
    assert isinstance(text, Gemma2Config)
    for f in dataclasses.fields(Gemma2Config):
        theirs = hf_text.rope_parameters["rope_theta"] if f.name == "rope_theta" else getattr(hf_text, f.name)
        assert getattr(text, f.name) == (tuple(theirs) if f.name == "layer_types" else theirs), f.name
    assert text.layer_types[:3] == (SLIDING_ATTENTION, FULL_ATTENTION, SLIDING_ATTENTION)
    assert [text.is_sliding(i) for i in range(3)] == [True, False, True]


def test_null_soft_caps_mean_no_capping():
    text_json = {
        "model_type": "gemma2",
        "vocab_size": 257216,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
    }
    config_json = {"model_type": "paligemma", "projection_dim": 2304, "text_config": text_json}
    text = PaliGemmaConfig.from_hf_dict(config_json).text_config
    assert text.attn_logit_softcapping is None and text.final_logit_softcapping is None


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"sliding_window": 0}, ValueError, "text_config.sliding_window must be positive, got 0"),
        ({"sliding_window": None}, ValueError, "sliding_window=null is not supported"),
        ({"query_pre_attn_scalar": float("nan")}, ValueError, "query_pre_attn_scalar must be a finite positive"),
        ({"attn_logit_softcapping": -1.0}, ValueError, "attn_logit_softcapping must be a finite positive"),
        ({"final_logit_softcapping": float("inf")}, ValueError, "final_logit_softcapping must be a finite positive"),
        ({"final_logit_softcapping": True}, TypeError, "final_logit_softcapping must be a number"),
        ({"layer_types": ["sliding_attention"]}, ValueError, "layer_types has 1 entries for num_hidden_layers=2"),
        ({"layer_types": ["sliding_attention", "chunked"]}, ValueError, "'chunked' is neither"),
        ({"layer_types": "sliding_attention"}, TypeError, "layer_types must be a list of strings"),
        ({"hidden_activation": "relu"}, ValueError, "text_config.hidden_activation must be 'gelu_pytorch_tanh'"),
    ],
)
def test_bad_gemma2_fields_are_refused(changes, error, message):
    config_json = dataclasses.replace(PaliGemmaConfig.tiny(), text_config=Gemma2Config.tiny()).to_hf_dict()
    config_json["text_config"].update(changes)
    with pytest.raises(error, match=message):
        PaliGemmaConfig.from_hf_dict(config_json)


# Gemma 2's parameters besides the embedding (Gemma Team 2024b, "Gemma 2", table 2): these do not
# depend on the vocabulary, which PaliGemma extends with <loc> and <seg> tokens.
GEMMA2_NON_EMBEDDING_PARAMETERS = {"3b": 2_024_517_888, "10b": 8_324_201_984, "28b": 26_047_480_320}


@pytest.mark.parametrize("size", sorted(GEMMA2_NON_EMBEDDING_PARAMETERS))
def test_paligemma2_presets_have_the_published_decoder_sizes(size):
    import torch

    from pgemma.paligemma import PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig.paligemma2(size)
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(config)
    decoder = model.language_model
    embedding = decoder.model.embed_tokens.weight.numel()  # tied to the output head: counted once
    assert sum(p.numel() for p in decoder.parameters()) - embedding == GEMMA2_NON_EMBEDDING_PARAMETERS[size]
    assert config.vision_config == PaliGemmaConfig.paligemma_3b_224().vision_config  # the same SigLIP So400m
    assert config.text_config.vocab_size == 257216 and config.image_token_index == 257152
    assert [PaliGemmaConfig.paligemma2(size, side).num_image_tokens for side in (224, 448, 896)] == [256, 1024, 4096]


def test_paligemma2_preset_refuses_unknown_sizes():
    with pytest.raises(ValueError, match="sizes 3b, 10b, 28b and image sizes 224, 448, 896; got '2b' and 224"):
        PaliGemmaConfig.paligemma2("2b")


@pytest.mark.parametrize("decoder", ["llama", "gemma3_text", None])
def test_a_decoder_that_is_neither_gemma_nor_gemma2_is_refused_by_name(decoder, tmp_path):
    config = PaliGemmaConfig.tiny().to_hf_dict()
    config["text_config"]["model_type"] = decoder
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: text_config.model_type must be 'gemma' .* got"):
        load_config(tmp_path)
