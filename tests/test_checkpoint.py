"""Loading and saving checkpoints: every key layout, dtypes, transformers round trip, clear errors."""

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import pgemma.processor
from pgemma.checkpoint import load_model, load_pretrained, pgemma_key, save_pretrained
from pgemma.config import PaliGemmaConfig

NAME = "grouped_query"


def _rewrite(
    source: Path,
    target: Path,
    rename: Callable[[str], str],
    shards: int = 1,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Copy a checkpoint with renamed keys, optionally split into shards with an index."""
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    tensors = {rename(key): tensor for key, tensor in load_file(source / "model.safetensors").items()}
    tensors.update(extra or {})
    if shards == 1:
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
        return target
    names = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: tensors[key] for key in names[shard::shards]}
        save_file(part, target / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def _hub(key: str) -> str:
    """transformers 5.23 writes vision_tower.embeddings...; the hub has vision_tower.vision_model.embeddings..."""
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1)


def _in_memory(key: str) -> str:
    """The transformers >= 5 in-memory names: model.vision_tower..., model.language_model.layers..."""
    return "model." + key.replace("language_model.model.", "language_model.", 1)


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def source(reference_checkpoint) -> Path:
    return reference_checkpoint(NAME)


@pytest.fixture(scope="module")
def inputs(configs, make_inputs) -> dict[str, torch.Tensor]:
    batch = make_inputs(configs[NAME], seed=11)
    del batch["labels"]
    return batch


def test_keys_of_every_layout_map_to_ours():
    ours = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    for key in (
        ours,
        "vision_tower.encoder.layers.0.mlp.fc1.weight",
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
        "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
    ):
        assert pgemma_key(key) == ours
    assert (
        pgemma_key("model.language_model.layers.3.self_attn.o_proj.weight")
        == "language_model.model.layers.3.self_attn.o_proj.weight"
    )
    assert pgemma_key("lm_head.weight") == "language_model.lm_head.weight"
    assert pgemma_key("model.multi_modal_projector.linear.bias") == "multi_modal_projector.linear.bias"
    assert pgemma_key("text_model.embeddings.weight") is None


def test_every_key_layout_gives_identical_logits(source, inputs, tmp_path):
    expected = _logits(load_model(source), inputs)
    embed = load_file(source / "model.safetensors")["language_model.model.embed_tokens.weight"]
    layouts = {
        "hub": _rewrite(source, tmp_path / "hub", _hub),
        "in_memory_with_head": _rewrite(source, tmp_path / "memory", _in_memory, extra={"lm_head.weight": embed}),
        "in_memory_vision_model": _rewrite(source, tmp_path / "memory_vm", lambda k: _in_memory(_hub(k))),
        "sharded": _rewrite(source, tmp_path / "sharded", _hub, shards=3),
    }
    for name, path in layouts.items():
        assert torch.equal(_logits(load_model(path), inputs), expected), name


def test_every_key_layout_of_a_paligemma2_checkpoint_gives_identical_logits(
    reference_checkpoint, paligemma2_configs, make_inputs, tmp_path
):
    source = reference_checkpoint("gemma2_grouped_query")
    inputs = make_inputs(paligemma2_configs["gemma2_grouped_query"], seed=11)
    del inputs["labels"]
    expected = _logits(load_model(source), inputs)
    layouts = {
        "hub": _rewrite(source, tmp_path / "hub", _hub),
        "in_memory": _rewrite(source, tmp_path / "memory", _in_memory),
        "sharded": _rewrite(source, tmp_path / "sharded", _hub, shards=3),
    }
    for name, path in layouts.items():
        assert torch.equal(_logits(load_model(path), inputs), expected), name
    saved = tmp_path / "saved"
    save_pretrained(load_model(source), saved)
    assert torch.equal(_logits(load_model(saved), inputs), expected), "saved by pgemma"


def test_loaded_model_is_tied_in_eval_mode_and_on_no_meta_tensor(source):
    model = load_model(source)
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_pgemma_saved_model_loads_in_transformers(source, inputs, reference_model, tmp_path):
    from pgemma.reference import load_reference_model

    save_pretrained(load_model(source), tmp_path / "saved")
    with safe_open(tmp_path / "saved" / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert not any("lm_head" in key for key in keys)
    reloaded = load_reference_model(tmp_path / "saved")
    assert torch.equal(_logits(reloaded, inputs), _logits(reference_model(NAME), inputs))
    assert torch.equal(_logits(load_model(tmp_path / "saved"), inputs), _logits(load_model(source), inputs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loading(source, inputs, dtype, tmp_path):
    model = load_model(source, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    logits = _logits(model, inputs)
    assert logits.dtype == dtype
    reference = _logits(load_model(source), inputs)
    assert (logits.float() - reference).abs().max() < 0.05 * reference.abs().max()
    save_pretrained(model, tmp_path / "half")  # a half-precision file loads as it was stored
    assert json.loads((tmp_path / "half" / "config.json").read_text())["dtype"] == str(dtype)[len("torch.") :]
    assert load_model(tmp_path / "half").language_model.model.embed_tokens.weight.dtype == dtype
    assert load_model(tmp_path / "half", dtype=torch.float32).multi_modal_projector.linear.weight.dtype == torch.float32


def test_load_pretrained_returns_the_processor_of_the_same_directory(source, monkeypatch):
    seen = []
    monkeypatch.setattr(pgemma.processor, "load_processor", lambda path: seen.append(path) or "processor")
    model, processor = load_pretrained(source, dtype=torch.bfloat16)
    assert processor == "processor" and seen == [source]
    assert model.multi_modal_projector.linear.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_files_get_the_permissions_the_umask_gives(tmp_path, random_model, mask, mode):
    model = random_model(PaliGemmaConfig.tiny())
    saved = os.umask(mask)
    try:
        save_pretrained(model, tmp_path / "saved")
    finally:
        os.umask(saved)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "saved").iterdir()}
    assert modes == {"config.json": mode, "model.safetensors": mode}  # nothing else, no temporary file


# Errors: each names what is wrong and where.


def test_missing_key_is_named(source, tmp_path):
    broken = tmp_path / "missing"
    _rewrite(source, broken, lambda k: k)
    tensors = load_file(broken / "model.safetensors")
    del tensors["language_model.model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: language_model\.model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(broken)


def test_unexpected_keys_are_named(source, tmp_path):
    extra = {"vision_tower.head.probe": torch.zeros(1, 1, 24), "text_model.foo": torch.zeros(2)}
    broken = _rewrite(source, tmp_path / "extra", lambda k: k, extra=extra)
    with pytest.raises(ValueError, match="unexpected keys .*text_model.foo"):
        load_model(broken)
    broken = _rewrite(source, tmp_path / "extra2", lambda k: k, extra={"vision_tower.head.probe": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected keys: vision_tower\.head\.probe"):
        load_model(broken)


def test_wrong_shape_is_named_with_both_shapes(source, tmp_path):
    key = "multi_modal_projector.linear.weight"
    broken = _rewrite(source, tmp_path / "shape", lambda k: k if k != key else "unused")
    tensors = load_file(broken / "model.safetensors")
    del tensors["unused"]
    tensors[key] = torch.zeros(48, 25)
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"multi_modal_projector\.linear\.weight in model\.safetensors has shape "
        r"\(48, 25\), the config needs \(48, 24\)",
    ):
        load_model(broken)


def test_untied_head_is_refused(source, tmp_path):
    broken = _rewrite(source, tmp_path / "untied", lambda k: k, extra={"lm_head.weight": torch.zeros(300, 48)})
    with pytest.raises(ValueError, match="lm_head.weight differs from embed_tokens.weight"):
        load_model(broken)


def test_pickles_are_refused(source, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match="found pytorch_model.bin but no model.safetensors; pgemma loads safetensors only"
    ):
        load_model(folder)
    with pytest.raises(ValueError, match="pytorch_model.bin: pgemma loads safetensors only"):
        load_model(folder / "pytorch_model.bin")


def test_missing_weights_are_reported(source, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    with pytest.raises(ValueError, match="no model.safetensors or model.safetensors.index.json"):
        load_model(folder)


def test_index_listing_a_missing_shard_is_reported(source, tmp_path):
    sharded = _rewrite(source, tmp_path / "sharded", lambda k: k, shards=2)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="lists model-00002-of-00002.safetensors, which is missing"):
        load_model(sharded)


def test_truncated_safetensors_is_reported_with_its_file(source, tmp_path):
    broken = _rewrite(source, tmp_path / "truncated", lambda k: k)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"truncated.model\.safetensors: not a readable safetensors file"):
        load_model(broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(broken)


def test_bad_config_json_is_reported(source, tmp_path):
    folder = _rewrite(source, tmp_path / "config", lambda k: k)
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match=r"no config\.json in '.*config'; is it a PaliGemma checkpoint folder"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_model(folder)
    config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type must be 'paligemma', got 'llava'"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({**config, "projection_dim": 32}))
    with pytest.raises(ValueError, match=r"config\.json: projection_dim \(32\) must equal text_config.hidden_size"):
        load_model(folder)


def test_config_that_disagrees_with_the_weights_names_every_problem(source, tmp_path):
    folder = _rewrite(source, tmp_path / "sizes", lambda k: k)
    config = json.loads((source / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 4
    config["text_config"]["intermediate_size"] = 80
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        load_model(folder)
    message = str(error.value)
    assert "missing keys: language_model.model.layers.3." in message
    assert (
        "language_model.model.layers.0.mlp.up_proj.weight in model.safetensors has shape (96, 48), "
        "the config needs (80, 48)" in message
    )


def test_unsupported_dtype_is_refused(source):
    with pytest.raises(ValueError, match="dtype must be torch.float32, torch.bfloat16 or torch.float16"):
        load_model(source, dtype=torch.int8)


def test_the_model_is_built_on_the_meta_device_and_filled_from_the_file(source, monkeypatch):
    import pgemma.checkpoint

    built_on = []

    class Recording(pgemma.checkpoint.PaliGemmaForConditionalGeneration):
        def __init__(self, *args):
            super().__init__(*args)
            built_on.append({p.device.type for p in self.parameters()})

    monkeypatch.setattr(pgemma.checkpoint, "PaliGemmaForConditionalGeneration", Recording)
    model = load_model(source)
    assert built_on == [{"meta"}]  # no memory for weights until they are read
    assert {p.device.type for p in model.parameters()} == {"cpu"}


NOT_FLOAT = {
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.uint8: "U8",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


@pytest.mark.parametrize("stored", list(NOT_FLOAT), ids=list(NOT_FLOAT.values()))
@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_a_weight_stored_as_a_non_float_is_refused_naming_key_file_and_dtype(source, tmp_path, stored, dtype):
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    folder = _rewrite(source, tmp_path / "ints", lambda k: k, shards=2)
    [file] = [f for f in folder.glob("*.safetensors") if key in load_file(f)]
    tensors = load_file(file)
    tensors[key] = (tensors[key] > 0) if stored == torch.bool else (tensors[key] * 100).to(stored)
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError) as error:
        load_model(folder, dtype=dtype)
    message = str(error.value)
    assert f"{key} in {file.name} stored as {NOT_FLOAT[stored]}, not as floating-point weights" in message
    assert message.startswith(f"{folder}: ")


@pytest.mark.parametrize("stored", [torch.int32, torch.uint8])
def test_an_integer_checkpoint_is_refused_without_suggesting_a_dtype(source, tmp_path, stored):
    folder = _rewrite(source, tmp_path / "ints", lambda k: k)
    tensors = {key: t.to(stored) for key, t in load_file(folder / "model.safetensors").items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    for dtype in (None, torch.float32, torch.bfloat16):
        with pytest.raises(ValueError, match=f"in model.safetensors stored as {NOT_FLOAT[stored]}") as error:
            load_model(folder, dtype=dtype)
        assert "dtype=" not in str(error.value)
        assert "language_model.model.embed_tokens.weight" in str(error.value)


def test_a_float64_weight_among_float32_ones_is_cast(source, tmp_path):
    key = "multi_modal_projector.linear.weight"
    folder = _rewrite(source, tmp_path / "f64", lambda k: k)
    tensors = load_file(folder / "model.safetensors")
    tensors[key] = tensors[key].double()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    weight = load_model(folder).multi_modal_projector.linear.weight
    assert weight.dtype == torch.float32 and torch.equal(weight, load_file(source / "model.safetensors")[key])


def test_float64_checkpoint_needs_an_explicit_dtype(source, tmp_path):
    folder = _rewrite(source, tmp_path / "f64", lambda k: k)
    tensors = {key: t.double() for key, t in load_file(folder / "model.safetensors").items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"embed_tokens.weight is stored as F64; pass dtype=torch.float32"):
        load_model(folder)
    assert load_model(folder, dtype=torch.float32).multi_modal_projector.linear.weight.dtype == torch.float32
