"""LoRA: the adapted model starts as the base, merges and unmerges, trains only A and B, and its
adapter files are PEFT's, in both directions."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pgemma.checkpoint import load_model
from pgemma.lora import (
    DECODER_TARGETS,
    LoRALinear,
    add_lora,
    load_adapter,
    merge_lora,
    save_adapter,
    trainable_parameters,
)


def _randomize_b(model: nn.Module, seed: int = 1) -> None:
    """Make every update non-zero (B starts at zero), large enough to change the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def _logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _adapted(random_model, config, targets=DECODER_TARGETS, r=4, alpha=8.0):
    model = random_model(config)
    torch.manual_seed(0)
    add_lora(model, targets, r=r, alpha=alpha)
    _randomize_b(model)
    return model


def test_adapted_model_starts_equal_to_the_base(config, random_model, make_inputs):
    inputs = make_inputs(config)
    model = random_model(config)
    base = _logits(model, inputs)
    names = add_lora(model, DECODER_TARGETS, r=4, alpha=8)
    assert len(names) == 7 * config.text_config.num_hidden_layers
    assert torch.equal(_logits(model, inputs), base)  # B = 0: the update adds exact zeros
    layer = model.get_submodule(names[0])
    assert layer.lora_A.abs().max() > 0 and layer.lora_B.abs().max() == 0


def test_only_lora_matrices_are_trainable(configs, random_model):
    config = configs["grouped_query"]
    model = random_model(config)
    q_proj = model.language_model.model.layers[0].self_attn.q_proj
    names = add_lora(model, ["q_proj", "mlp.down_proj"], r=2, alpha=4)
    text = config.text_config
    assert names == [
        f"language_model.model.layers.{i}.{layer}"
        for i in range(text.num_hidden_layers)
        for layer in ("self_attn.q_proj", "mlp.down_proj")
    ]
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert all(name.endswith(("lora_A", "lora_B")) for name in trainable) and len(trainable) == 2 * len(names)
    q_proj_shape = (text.hidden_size, text.num_attention_heads * text.head_dim)  # (in, out)
    down_proj_shape = (text.intermediate_size, text.hidden_size)
    per_layer = 2 * sum(q_proj_shape) + 2 * sum(down_proj_shape)  # r (in + out) numbers per wrapped layer
    assert trainable_parameters(model) == text.num_hidden_layers * per_layer
    wrapped = model.language_model.model.layers[0].self_attn.q_proj
    assert isinstance(wrapped, LoRALinear) and wrapped.weight is q_proj.weight  # the base Parameter, kept
    assert isinstance(model.vision_tower.vision_model.encoder.layers[0].self_attn.q_proj, nn.Linear)  # decoder only


def test_merged_model_equals_the_adapted_one(config, random_model, make_inputs):
    inputs = make_inputs(config)
    model = _adapted(random_model, config)
    base = _logits(random_model(config), inputs)
    adapted = _logits(model, inputs)
    assert (adapted - base).abs().max() > 1e-2  # the update matters
    merged_names = merge_lora(model)
    assert len(merged_names) == 7 * config.text_config.num_hidden_layers
    assert not any(isinstance(module, LoRALinear) for module in model.modules())
    assert type(model.language_model.model.layers[0].mlp.up_proj) is nn.Linear
    assert (_logits(model, inputs) - adapted).abs().max() <= 1e-5


def test_unmerge_restores_the_base_weights(configs, random_model, make_inputs):
    config = configs["multi_query"]
    inputs = make_inputs(config)
    model = _adapted(random_model, config, targets=["o_proj", "gate_proj"])
    before = {name: param.clone() for name, param in model.state_dict().items()}
    adapted = _logits(model, inputs)
    layers = {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}
    for layer in layers.values():
        layer.merge()
    assert (_logits(model, inputs) - adapted).abs().max() <= 1e-5
    first = next(iter(layers))
    assert not torch.allclose(layers[first].weight, before[f"{first}.weight"], atol=1e-3)  # merged in place
    with pytest.raises(RuntimeError, match="merged already"):
        layers[first].merge()
    for layer in layers.values():
        layer.unmerge()
    for name, param in model.state_dict().items():
        torch.testing.assert_close(param, before[name], rtol=0, atol=1e-6)
    assert (_logits(model, inputs) - adapted).abs().max() <= 1e-5


def test_a_training_step_changes_only_the_lora_matrices(configs, random_model, make_inputs):
    config = configs["grouped_query"]
    model = random_model(config)
    torch.manual_seed(0)
    add_lora(model, DECODER_TARGETS, r=4, alpha=8, dropout=0.1)
    before = {name: param.clone() for name, param in model.named_parameters()}
    optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], weight_decay=0.0)
    model.train()
    model(**make_inputs(config)).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name.endswith("lora_B"):  # its gradient is x A^T times the output's: not zero
            assert not torch.equal(param, before[name]), name
        elif name.endswith("lora_A"):  # its first gradient passes through B = 0: zero
            assert torch.equal(param, before[name]) and not param.grad.any(), name
        else:  # the base is frozen
            assert torch.equal(param, before[name]) and param.grad is None, name


def test_save_and_load_give_the_same_model(configs, random_model, make_inputs, tmp_path):
    config = configs["multi_head"]
    inputs = make_inputs(config)
    model = _adapted(random_model, config, targets=["k_proj", "up_proj"], r=3, alpha=5)
    save_adapter(model, tmp_path, base_model_name_or_path="google/paligemma-3b-pt-224")
    config_file = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config_file["peft_type"] == "LORA" and (config_file["r"], config_file["lora_alpha"]) == (3, 5)
    assert config_file["base_model_name_or_path"] == "google/paligemma-3b-pt-224"
    assert config_file["target_modules"][0] == "model.language_model.layers.0.self_attn.k_proj"
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert len(tensors) == 2 * 2 * config.text_config.num_hidden_layers
    key = "base_model.model.model.language_model.layers.1.mlp.up_proj.lora_B.weight"
    assert torch.equal(tensors[key], model.language_model.model.layers[1].mlp.up_proj.lora_B)
    fresh = random_model(config)
    names = load_adapter(fresh, tmp_path)
    assert names == [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    assert torch.equal(_logits(fresh, inputs), _logits(model, inputs))
    assert trainable_parameters(fresh) == trainable_parameters(model)
    # The same adapter in the hub's layout (as PEFT wrote it with transformers 4) loads the same.
    hub = {key.replace("model.model.language_model.", "model.language_model.model."): t for key, t in tensors.items()}
    save_file(hub, tmp_path / "adapter_model.safetensors")
    old_layout = random_model(config)
    assert load_adapter(old_layout, tmp_path) == names
    assert torch.equal(_logits(old_layout, inputs), _logits(model, inputs))


def test_clear_errors(configs, random_model, tmp_path):
    config = configs["multi_query"]
    model = random_model(config)
    with pytest.raises(
        ValueError, match=r"\['qkv_proj'\].*down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    ):
        add_lora(model, ["q_proj", "qkv_proj"], r=4, alpha=8)
    with pytest.raises(ValueError, match="name no linear layer"):
        add_lora(model, ["fc1"], r=4, alpha=8)  # SigLIP's: the decoder only
    with pytest.raises(TypeError, match="list of names"):
        add_lora(model, "q_proj", r=4, alpha=8)
    with pytest.raises(ValueError, match="r .* >= 1, got 0"):
        add_lora(model, ["q_proj"], r=0, alpha=8)
    with pytest.raises(ValueError, match="dropout"):
        add_lora(model, ["q_proj"], r=2, alpha=8, dropout=1.0)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(model, tmp_path)
    assert not any(isinstance(module, LoRALinear) for module in model.modules())  # nothing was half-done
    add_lora(model, ["q_proj"], r=2, alpha=8)
    with pytest.raises(ValueError, match="has LoRA layers already"):
        add_lora(model, ["v_proj"], r=2, alpha=8)


def test_load_adapter_names_the_file_and_key(configs, random_model, tmp_path):
    model = _adapted(random_model, configs["multi_query"], targets=["q_proj"], r=2, alpha=4)
    save_adapter(model, tmp_path / "good")
    with pytest.raises(ValueError, match="adapter_config.json: missing"):
        load_adapter(random_model(configs["multi_query"]), tmp_path)
    with pytest.raises(
        ValueError, match=r"layers.0.self_attn.q_proj.lora_A.weight has shape \(2, 64\), expected \(2, 48\)"
    ):
        load_adapter(random_model(configs["grouped_query"]), tmp_path / "good")

    def variant(name: str, config_changes: dict, tensors_change=None) -> object:
        folder = tmp_path / name
        folder.mkdir()
        config = json.loads((tmp_path / "good" / "adapter_config.json").read_text()) | config_changes
        (folder / "adapter_config.json").write_text(json.dumps(config))
        tensors = load_file(tmp_path / "good" / "adapter_model.safetensors")
        if tensors_change is not None:
            tensors_change(tensors)
        save_file(tensors, folder / "adapter_model.safetensors")
        return folder

    bad = {
        "dora": ({"use_dora": True}, None, "use_dora"),
        "prefix": ({"peft_type": "PREFIX_TUNING"}, None, "not a LoRA adapter"),
        "pissa": ({"init_lora_weights": "pissa_niter_4"}, None, "changes the base weights"),
        "rank": ({"r": 3}, None, r"shape \(2, 64\), expected \(3, 64\)"),
        "unknown": ({}, lambda t: t.update(extra=torch.zeros(1)), "unexpected key 'extra'"),
        "vision": (
            {},
            lambda t: t.update({"base_model.model.model.vision_tower.head.lora_A.weight": torch.zeros(2, 2)}),
            "names no linear layer",
        ),
        "twice": (
            {},
            lambda t: t.update(
                {"base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 64)}
            ),
            "same matrix in two layouts",
        ),
        "half": (
            {},
            lambda t: t.pop("base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_B.weight"),
            "no lora_B for .*layers.1.self_attn.q_proj",
        ),
    }
    for name, (config_changes, tensors_change, message) in bad.items():
        fresh = random_model(configs["multi_query"])
        with pytest.raises(ValueError, match=message):
            load_adapter(fresh, variant(name, config_changes, tensors_change))
        assert not any(isinstance(module, LoRALinear) for module in fresh.modules()), name


def test_an_adapter_saved_by_pgemma_loads_into_peft(config_name, config, reference_checkpoint, make_inputs, tmp_path):
    peft = pytest.importorskip("peft")
    from pgemma.reference import load_reference_model

    path = reference_checkpoint(config_name)
    model = load_model(path)
    torch.manual_seed(0)
    add_lora(model, DECODER_TARGETS, r=4, alpha=8)
    _randomize_b(model)
    save_adapter(model, tmp_path, base_model_name_or_path=str(path))
    theirs = peft.PeftModel.from_pretrained(load_reference_model(path), tmp_path).eval()
    wrapped = [name for name, module in theirs.named_modules() if hasattr(module, "lora_A") and module.lora_A]
    assert len(wrapped) == 7 * config.text_config.num_hidden_layers  # exactly our layers, none of SigLIP's
    inputs = make_inputs(config, seed=1, padding=(0, 3, 1))
    ours = _logits(model, inputs)
    assert (ours - _logits(load_model(path), inputs)).abs().max() > 1e-2
    assert (ours - _logits(theirs, inputs)).abs().max() <= 1e-5


def test_an_adapter_saved_by_peft_loads_into_pgemma(config_name, config, reference_checkpoint, make_inputs, tmp_path):
    peft = pytest.importorskip("peft")
    from pgemma.reference import load_reference_model

    path = reference_checkpoint(config_name)
    torch.manual_seed(0)
    # A list of names: PEFT wraps SigLIP's q_proj and v_proj too, so the adapter reaches both towers.
    lora_config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj", "fc2"])
    theirs = peft.get_peft_model(load_reference_model(path), lora_config).eval()
    _randomize_b(theirs)
    theirs.save_pretrained(tmp_path)
    model = load_model(path)
    names = load_adapter(model, tmp_path)
    layers = config.vision_config.num_hidden_layers * 3 + config.text_config.num_hidden_layers * 4
    assert len(names) == layers and "vision_tower.vision_model.encoder.layers.0.mlp.fc2" in names
    inputs = make_inputs(config, seed=1, padding=(0, 3, 1))
    ours = _logits(model, inputs)
    assert (ours - _logits(load_model(path), inputs)).abs().max() > 1e-2
    assert (ours - _logits(theirs, inputs)).abs().max() <= 1e-5


def test_speeding_up_refuses_unmerged_adapters_and_keeps_merged_ones(configs, random_model, make_inputs):
    from pgemma.fast import prepare_for_speed

    config = configs["multi_query"]
    inputs = make_inputs(config)
    model = _adapted(random_model, config)
    with pytest.raises(ValueError, match="merge_lora"):
        prepare_for_speed(model)
    adapted = _logits(model, inputs)
    merge_lora(model)
    assert (_logits(prepare_for_speed(model), inputs) - adapted).abs().max() <= 1e-5
