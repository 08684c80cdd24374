"""LoRA: fine-tune two small matrices beside each frozen weight, saved as PEFT saves them.

Book chapter: "Fine-tuning PaliGemma". Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", section 4.1.

A linear layer ``y = x W^T`` keeps ``W`` (out x in) frozen and learns a low-rank update beside it:
``y = x W^T + (x A^T B^T) * alpha / r``, with ``A`` (r x in) and ``B`` (out x r) and a rank r far below
in and out: r = 8 on every linear layer of PaliGemma 3B's decoder trains 9.8M numbers, 0.3% of the
model. ``B`` starts at zero, so the adapted model starts equal to the base; ``A`` starts random
(kaiming-uniform, as PEFT draws it), so ``B``'s first gradient is not zero. Merging folds
``B A * alpha / r`` into ``W``: the model is then exactly as fast as before, with the update learned.

The adapter files are PEFT's (``adapter_config.json`` + ``adapter_model.safetensors``): an adapter
trained here loads with ``peft.PeftModel.from_pretrained`` onto transformers' PaliGemma, and one made
with PEFT loads here. Their keys are ``base_model.model.<transformers' module name>.lora_A.weight``
(and ``lora_B``); ``checkpoint.TRANSFORMERS_RENAMES`` maps those names to ours and back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pgemma.checkpoint import TRANSFORMERS_RENAMES, pgemma_key
from pgemma.files import atomic_write
from pgemma.paligemma import PaliGemmaForConditionalGeneration

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's PeftModel.base_model (a LoraModel) holds transformers' model as .model
DECODER_PREFIX = "language_model.model.layers."
# Every linear layer of a Gemma decoder block: attention, then the MLP.
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# PEFT options that change the update's math or add weights pgemma's LoRA does not have; each must be off.
UNSUPPORTED_OPTIONS = (
    "use_dora",
    "use_rslora",
    "lora_bias",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "trainable_token_indices",
    "layer_replication",
    "target_parameters",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "arrow_config",
)
# Initializations that also change the base weights: the adapter alone does not restore the model.
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``base(x) + dropout(x) A^T B^T * alpha / r``.

    The base layer's Parameters are kept (the same objects, frozen, under the same names ``weight`` and
    ``bias``), so the state dict keeps the base's keys and adds ``lora_A`` and ``lora_B``.
    ``merge()`` folds the update into ``weight`` in place and ``unmerge()`` takes it out again.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_settings(r, alpha, dropout)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), the base layer's Parameter
        self.register_parameter("bias", base.bias)  # (out,) or None
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))  # (out, r): the update starts at 0
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as PEFT draws A
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float[..., in] -> float[..., out]."""
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged:  # the update is inside weight already
            return y
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T  # (..., r), then (..., out)
        return y + update * self.scaling

    def delta(self) -> torch.Tensor:
        """The update to the weight, ``B A * alpha / r``: float[out, in] (rank r at most)."""
        return self.lora_B @ self.lora_A * self.scaling  # (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to ``weight`` in place: one product per call again, the same outputs up to rounding."""
        if self.merged:
            raise RuntimeError("this LoRA layer is merged already; unmerge() it first")
        self.weight += self.delta()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from ``weight`` again: the base weights back, up to float rounding."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged; merge() it first")
        self.weight -= self.delta()
        self.merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha}"


def add_lora(
    model: PaliGemmaForConditionalGeneration,
    target_modules: Sequence[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
) -> list[str]:
    """Wrap the Gemma decoder's linear layers named by ``target_modules`` in ``LoRALinear``; freeze the rest.

    Args:
        model: a pgemma PaliGemma, changed in place: afterwards only the LoRA matrices are trainable.
        target_modules: name suffixes, matched as PEFT matches a list: ``"q_proj"`` wraps every decoder
            layer's query projection, ``"3.self_attn.q_proj"`` only layer 3's. ``DECODER_TARGETS`` names them all.
        r: the rank of the update (1 or more).
        alpha: sets the update's scale, ``alpha / r``.
        dropout: the probability of dropping an input of the update while training (0 to 1, excluded).
    Returns:
        The names of the wrapped layers, e.g. ``language_model.model.layers.0.self_attn.q_proj``.
    Raises:
        ValueError: a target that names no linear layer of the decoder (the message lists those there
            are), r, alpha or dropout out of range, or a model that has LoRA layers already.
        TypeError: ``target_modules`` given as one string rather than a list of names.
    Note: only the decoder. SigLIP's attention has ``q_proj``, ``k_proj`` and ``v_proj`` too, which PEFT's
    ``target_modules=["q_proj"]`` also wraps; ``save_adapter`` names the exact layers, so PEFT wraps the same.
    """
    if isinstance(target_modules, str):
        raise TypeError(
            f"target_modules is a list of names, e.g. [{target_modules!r}], got the string {target_modules!r}"
        )
    _check_settings(r, alpha, dropout)
    _check_no_lora(model)
    linears = [
        name
        for name, module in model.named_modules()
        if name.startswith(DECODER_PREFIX) and isinstance(module, nn.Linear)
    ]
    unknown = [target for target in target_modules if not any(_matches(name, target) for name in linears)]
    if unknown or not target_modules:
        available = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ValueError(
            f"target_modules {list(unknown or target_modules)} name no linear layer of the Gemma decoder; "
            f"its linear layers are {', '.join(available)}"
        )
    names = [name for name in linears if any(_matches(name, target) for target in target_modules)]
    _wrap(model, names, r, alpha, dropout)
    return names


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every LoRA layer into its base weight and put a plain ``nn.Linear`` back in its place.

    The model is changed in place and computes what the adapted one did, up to float rounding, at the
    base model's cost. Its parameters stay frozen (``requires_grad`` False). Returns the names of the
    merged layers. Merge before ``pgemma.fast.prepare_for_speed``: its fused projections stack the
    layers' ``weight`` only, so they would leave an unmerged update out.
    """
    names = []
    for name, layer in _lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight = layer.weight  # the same Parameter: no copy
        plain.bias = layer.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, plain)
        names.append(name)
    return names


def trainable_parameters(model: nn.Module) -> int:
    """How many numbers an optimizer would train: parameters with ``requires_grad``, tied ones counted once."""
    return sum(param.numel() for param in model.parameters() if param.requires_grad)


def save_adapter(
    model: PaliGemmaForConditionalGeneration, folder: str | Path, base_model_name_or_path: str | None = None
) -> None:
    """Write the model's LoRA layers as PEFT does: ``adapter_config.json`` + ``adapter_model.safetensors``.

    Args:
        model: a model with LoRA layers (``add_lora`` or ``load_adapter``), all with the same r, alpha
            and dropout (PEFT's config has one of each).
        folder: created if missing; the two files are written whole (``files.atomic_write``).
        base_model_name_or_path: the checkpoint the adapter belongs to (a hub name or a directory),
            recorded in the config, where ``peft.PeftModel`` looks for the base model.
    Note: ``target_modules`` lists the wrapped layers by their full names in transformers >= 5 (the
    names the keys use too), so PEFT wraps exactly these layers (a list like ``["q_proj"]`` would also
    wrap SigLIP's); transformers 4, whose names differ, cannot match them.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save; call add_lora or load_adapter first")
    settings = {(layer.r, layer.alpha, layer.dropout.p) for layer in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"PEFT's adapter config holds one r, alpha and dropout; these layers have {sorted(settings)}")
    r, alpha, dropout = settings.pop()
    theirs = {name: _transformers_name(name) for name in layers}
    state = {}
    for name, layer in layers.items():
        for matrix in ("lora_A", "lora_B"):
            state[f"{PEFT_PREFIX}{theirs[name]}.{matrix}.weight"] = getattr(layer, matrix).detach().cpu().contiguous()
    config = {  # LoraConfig's fields; PEFT fills in the defaults of the others
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": list(theirs.values()),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / ADAPTER_CONFIG_NAME) as temporary:
        temporary.write_text(json.dumps(config, indent=2) + "\n")
    with atomic_write(folder / ADAPTER_WEIGHTS_NAME) as temporary:
        save_file(state, temporary, metadata={"format": "pt"})


def load_adapter(model: PaliGemmaForConditionalGeneration, folder: str | Path) -> list[str]:
    """Wrap the layers a PEFT LoRA adapter names and load its matrices; the rest of the model is frozen.

    Args:
        model: a pgemma PaliGemma without LoRA layers, changed in place.
        folder: ``adapter_config.json`` + ``adapter_model.safetensors``, as ``save_adapter`` or PEFT's
            ``save_pretrained`` writes them (in any key layout ``checkpoint.load_model`` reads).
    Returns:
        The names of the wrapped layers. The matrices are cast to the dtype of the weights they adapt.
    Raises:
        ValueError: naming the file and key, for a missing or pickled file, a config that is not LoRA or
            uses an option pgemma does not implement (DoRA, rsLoRA, per-layer ranks, extra trained
            modules...), a key that names no linear layer of the model, an A without its B, and a
            shape that does not fit the layer or the rank.
    """
    folder = Path(folder)
    r, alpha, dropout = _read_adapter_config(folder / ADAPTER_CONFIG_NAME)
    path = folder / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        pickle = folder / "adapter_model.bin"
        if pickle.is_file():
            raise ValueError(f"{pickle}: pgemma loads safetensors only (a pickle can run code when loaded)")
        raise ValueError(f"{folder}: no {ADAPTER_WEIGHTS_NAME}")
    _check_no_lora(model)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    matrices: dict[str, dict[str, torch.Tensor]] = {}  # our layer name -> {"lora_A": ..., "lora_B": ...}
    prefixes: dict[str, str] = {}  # our layer name -> its keys' prefix in the file
    for key, tensor in tensors.items():
        module_name, _, matrix = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").rpartition(".")
        if not key.startswith(PEFT_PREFIX) or not key.endswith(".weight") or matrix not in ("lora_A", "lora_B"):
            raise ValueError(f"{path}: unexpected key {key!r}; expected {PEFT_PREFIX}<module>.lora_A.weight or lora_B")
        name = pgemma_key(module_name)
        if name not in linears:
            raise ValueError(f"{path}: {key!r} names no linear layer of this PaliGemma ({module_name!r})")
        if not tensor.is_floating_point():
            raise ValueError(f"{path}: {key!r} is stored as {tensor.dtype}, not as floating-point weights")
        if matrix in matrices.setdefault(name, {}):
            raise ValueError(f"{path}: {prefixes[name]}.{matrix}.weight and {key!r} are the same matrix in two layouts")
        matrices[name][matrix], prefixes[name] = tensor, key.removesuffix(f".{matrix}.weight")
    if not matrices:
        raise ValueError(f"{path}: holds no LoRA matrices")
    for name, pair in matrices.items():
        key = prefixes[name]
        missing = {"lora_A", "lora_B"} - set(pair)
        if missing:
            raise ValueError(f"{path}: has no {missing.pop()} for {key} (a LoRA layer needs both A and B)")
        layer = linears[name]
        for matrix, expected in (("lora_A", (r, layer.in_features)), ("lora_B", (layer.out_features, r))):
            shape = tuple(pair[matrix].shape)
            if shape != expected:
                raise ValueError(
                    f"{path}: {key}.{matrix}.weight has shape {shape}, expected {expected} "
                    f"(rank r={r} from {ADAPTER_CONFIG_NAME}, the layer is {layer.in_features} -> {layer.out_features})"
                )
    names = [name for name in linears if name in matrices]  # in the model's order
    _wrap(model, names, r, alpha, dropout)
    with torch.no_grad():
        for name in names:
            layer = model.get_submodule(name)
            layer.lora_A.copy_(matrices[name]["lora_A"])
            layer.lora_B.copy_(matrices[name]["lora_B"])
    return names


def _read_adapter_config(path: Path) -> tuple[int, float, float]:
    """r, alpha and dropout from a PEFT ``adapter_config.json``, after refusing what pgemma's LoRA cannot do."""
    if not path.is_file():
        raise ValueError(f"{path}: missing (a PEFT adapter folder has {ADAPTER_CONFIG_NAME} + {ADAPTER_WEIGHTS_NAME})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        peft_type = config.get("peft_type") if isinstance(config, dict) else None
        raise ValueError(f"{path}: not a LoRA adapter (peft_type {peft_type!r}, expected 'LORA')")
    used = [option for option in UNSUPPORTED_OPTIONS if config.get(option)]
    if config.get("bias", "none") != "none":
        used.append("bias")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.startswith(BASE_CHANGING_INITS):
        used.append(f"init_lora_weights={init!r} (it changes the base weights too)")
    if used:
        raise ValueError(f"{path}: uses PEFT options pgemma's LoRA does not implement: {', '.join(used)}")
    r, alpha, dropout = config.get("r"), config.get("lora_alpha"), config.get("lora_dropout", 0.0)
    try:
        _check_settings(r, alpha, dropout)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    return r, alpha, dropout


def _check_settings(r: int, alpha: float, dropout: float) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r (the rank) must be an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0 (the scale is alpha / r), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")


def _check_no_lora(model: nn.Module) -> None:
    wrapped = list(_lora_layers(model))
    if wrapped:
        raise ValueError(
            f"the model has LoRA layers already ({wrapped[0]} and {len(wrapped) - 1} more); "
            "merge_lora(model) first, or start from a fresh model"
        )


def _lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a list of target modules: the whole name, or its end after a dot."""
    return name == target or name.endswith("." + target)


def _wrap(model: nn.Module, names: list[str], r: int, alpha: float, dropout: float) -> None:
    """Freeze every parameter, then replace each named ``nn.Linear`` by a ``LoRALinear`` around it."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        parent, _, child = name.rpartition(".")
        module = model.get_submodule(parent)
        setattr(module, child, LoRALinear(getattr(module, child), r, alpha, dropout))


def _transformers_name(name: str) -> str:
    """transformers' (>= 5) name for one of our module names: the inverse of ``checkpoint.pgemma_key``."""
    for theirs, ours in TRANSFORMERS_RENAMES:
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise ValueError(f"{name!r} is not a module of a PaliGemma")
