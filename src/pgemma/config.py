"""Model configuration: one frozen dataclass per tower, composed into a PaliGemma config.

Book chapter: "Assembling PaliGemma" (the parts and their sizes, reading and writing Hugging Face
``config.json``).

Field names are the Hugging Face ``config.json`` keys, so a reader can hold the two side by side.
``load_config`` is the one reader of a checkpoint folder's ``config.json``: the model
(``checkpoint.load_model``) and the processor (``processor.load_processor``) are both built from
what it returns, so they cannot read the file differently.

Every config checks its own numbers when it is built, from a file or by hand: sizes are positive
ints (``True`` is not an int here, although Python says so), epsilons and the RoPE base are finite
positive numbers (JSON read by Python allows ``NaN`` and ``Infinity``, and ``nan <= 0`` is false, so
"not positive" alone would let them through), and token ids lie inside the vocabulary. A wrong type
is a TypeError, a number out of range a ValueError; ``load_config`` adds the file's name.

PaliGemma 1 has a Gemma decoder (``GemmaConfig``), PaliGemma 2 a Gemma 2 decoder (``Gemma2Config``,
the same fields and five more); ``from_hf_dict`` picks by ``text_config.model_type``.

Not supported (refused with a ValueError when read from ``config.json``): a SigLIP pooling head, biases in the decoder's attention, RoPE scaling, and activations
other than the tanh approximation of GELU.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
# The label of a token that contributes no loss (torch's cross_entropy ignore_index). It lives
# here, the bottom of the package, because the processor writes it and the model's loss skips
# it, and neither may import the other; the hub's config.json carries it too ("ignore_index").
IGNORE_INDEX = -100
# The fields of PaliGemmaConfig that are token ids: each must lie inside the vocabulary.
TOKEN_ID_FIELDS = ("image_token_index", "pad_token_id", "eos_token_id", "bos_token_id")


@dataclass(frozen=True)
class SiglipVisionConfig:
    """The SigLIP vision encoder (a ViT without its pooling head). Defaults: So400m/14 at 224 px."""

    hidden_size: int = 1152
    intermediate_size: int = 4304  # "shape-optimized" width of So400m, not 4 * 1152
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_numbers(self, "vision_config")
        _check_epsilon(self.layer_norm_eps, "vision_config.layer_norm_eps")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision_config: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision_config: image_size ({self.image_size}) must be divisible by "
                f"patch_size ({self.patch_size}); patches tile the image without overlap or padding"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        """P, the number of image tokens: one per patch of the square image."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def tiny(cls) -> SiglipVisionConfig:
        return cls(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        )


@dataclass(frozen=True)
class GemmaConfig:
    """The Gemma decoder. Defaults: Gemma 2B as used in PaliGemma 1 (vocabulary with loc/seg tokens)."""

    vocab_size: int = 257216  # 256000 text + 1024 <locNNNN> + 128 <segNNN> + <image> and others
    hidden_size: int = 2048
    intermediate_size: int = 16384
    num_hidden_layers: int = 18
    num_attention_heads: int = 8
    num_key_value_heads: int = 1  # 1 => multi-query attention: all query heads share one key/value head
    head_dim: int = 256  # explicit: not always hidden_size // num_attention_heads (Gemma 7B: 256, not 192)
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        _check_numbers(self, "text_config")
        _check_epsilon(self.rms_norm_eps, "text_config.rms_norm_eps")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"text_config: num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}); each kv head serves a whole group"
            )
        if self.head_dim % 2:
            raise ValueError(f"text_config: head_dim must be even for RoPE (got {self.head_dim})")

    @classmethod
    def tiny(cls) -> GemmaConfig:
        return cls(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=128,
        )


SLIDING_ATTENTION, FULL_ATTENTION = "sliding_attention", "full_attention"  # Gemma 2's layer_types


@dataclass(frozen=True)
class Gemma2Config(GemmaConfig):
    """The Gemma 2 decoder (Gemma Team 2024b). Defaults: Gemma 2 2B as used in PaliGemma 2 3B.

    Gemma's fields, with five more:

    - ``query_pre_attn_scalar``: attention scores are scaled by ``query_pre_attn_scalar ** -0.5``
      instead of ``head_dim ** -0.5`` (the same number when they are equal, as in 2B);
    - ``attn_logit_softcapping``, ``final_logit_softcapping``: scores and output logits are squashed
      into (-cap, cap) by ``cap * tanh(x / cap)``; None leaves them uncapped;
    - ``sliding_window``: a layer marked ``"sliding_attention"`` lets a query see only the last
      ``sliding_window`` keys (itself included) of the causal context;
    - ``layer_types``: one entry per layer, ``"sliding_attention"`` or ``"full_attention"``; None
      means alternating, sliding first (transformers' default), and is replaced by that tuple.
    """

    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4  # grouped-query attention: two query heads per kv head
    query_pre_attn_scalar: float = 256
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    sliding_window: int = 4096
    layer_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer_types is None:
            alternating = tuple(
                SLIDING_ATTENTION if index % 2 == 0 else FULL_ATTENTION for index in range(self.num_hidden_layers)
            )
            object.__setattr__(self, "layer_types", alternating)  # a frozen dataclass's own fields
        if not isinstance(self.layer_types, (tuple, list)) or isinstance(self.layer_types, str):
            raise TypeError(f"text_config.layer_types must be a list of strings, got {self.layer_types!r}")
        object.__setattr__(self, "layer_types", tuple(self.layer_types))  # a JSON list becomes a tuple
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"text_config.layer_types has {len(self.layer_types)} entries for "
                f"num_hidden_layers={self.num_hidden_layers}"
            )
        for kind in self.layer_types:
            if kind not in (SLIDING_ATTENTION, FULL_ATTENTION):
                raise ValueError(
                    f"text_config.layer_types: {kind!r} is neither {SLIDING_ATTENTION!r} nor {FULL_ATTENTION!r}"
                )

    @classmethod
    def gemma2_2b(cls) -> Gemma2Config:
        """Gemma 2 2B, PaliGemma 2 3B's decoder (the defaults)."""
        return cls()

    @classmethod
    def gemma2_9b(cls) -> Gemma2Config:
        """Gemma 2 9B, PaliGemma 2 10B's decoder."""
        return cls(
            hidden_size=3584,
            intermediate_size=14336,
            num_hidden_layers=42,
            num_attention_heads=16,
            num_key_value_heads=8,
        )

    @classmethod
    def gemma2_27b(cls) -> Gemma2Config:
        """Gemma 2 27B, PaliGemma 2 28B's decoder: heads of 128, scores scaled by (4608 / 32) ** -0.5."""
        return cls(
            hidden_size=4608,
            intermediate_size=36864,
            num_hidden_layers=46,
            num_attention_heads=32,
            num_key_value_heads=16,
            head_dim=128,
            query_pre_attn_scalar=144,  # hidden_size / num_attention_heads, not head_dim
        )

    def is_sliding(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` attends through the sliding window."""
        return self.layer_types[layer] == SLIDING_ATTENTION

    @classmethod
    def tiny(cls) -> Gemma2Config:
        """Gemma's tiny sizes, a window of 4 tokens (shorter than any prompt), sliding and full layers."""
        return cls(
            **{f.name: getattr(GemmaConfig.tiny(), f.name) for f in fields(GemmaConfig)},
            query_pre_attn_scalar=24,  # not head_dim (16): a scale taken from the wrong field shows
            attn_logit_softcapping=2.0,  # small caps, so that capping changes the numbers
            final_logit_softcapping=3.0,
            sliding_window=4,
        )


@dataclass(frozen=True)
class PaliGemmaConfig:
    """SigLIP + a linear projector + Gemma. Defaults: ``google/paligemma-3b-pt-224``."""

    vision_config: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    text_config: GemmaConfig = field(default_factory=GemmaConfig)
    projection_dim: int = 2048  # output width of the projector: must equal text_config.hidden_size
    image_token_index: int = 257152
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2

    def __post_init__(self) -> None:
        for name, expected in (("vision_config", SiglipVisionConfig), ("text_config", GemmaConfig)):
            if not isinstance(getattr(self, name), expected):
                raise TypeError(f"{name} must be a {expected.__name__}, got {getattr(self, name)!r}")
        _check_numbers(self, "")
        if self.projection_dim != self.text_config.hidden_size:
            raise ValueError(
                f"projection_dim ({self.projection_dim}) must equal text_config.hidden_size "
                f"({self.text_config.hidden_size}): projected patches are placed among text embeddings"
            )
        vocab = self.text_config.vocab_size
        for name in TOKEN_ID_FIELDS:
            value = getattr(self, name)
            if not 0 <= value < vocab:
                raise ValueError(f"{name} ({value}) must be in [0, text_config.vocab_size={vocab})")
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            if getattr(self, name) == self.image_token_index:
                raise ValueError(
                    f"image_token_index and {name} are both {self.image_token_index}: the model would "
                    "take that token for a place to put an image patch"
                )
        if self.num_image_tokens >= self.text_config.max_position_embeddings:
            raise ValueError(
                f"{self.num_image_tokens} image tokens leave no room for text in a context of "
                f"text_config.max_position_embeddings={self.text_config.max_position_embeddings}"
            )

    @property
    def num_image_tokens(self) -> int:
        return self.vision_config.num_patches

    @classmethod
    def paligemma_3b_224(cls) -> PaliGemmaConfig:
        """The real numbers of PaliGemma 1, 3B parameters, 224 x 224 images (256 image tokens)."""
        return cls()

    @classmethod
    def paligemma2(cls, size: str = "3b", image_size: int = 224) -> PaliGemmaConfig:
        """The real numbers of PaliGemma 2: ``size`` "3b", "10b" or "28b" (decoder Gemma 2 2B, 9B or
        27B), ``image_size`` 224, 448 or 896 (256, 1024 or 4096 image tokens)."""
        decoders = {"3b": Gemma2Config.gemma2_2b, "10b": Gemma2Config.gemma2_9b, "28b": Gemma2Config.gemma2_27b}
        if size not in decoders or image_size not in (224, 448, 896):
            raise ValueError(
                f"PaliGemma 2 comes in sizes {', '.join(decoders)} and image sizes 224, 448, 896; "
                f"got {size!r} and {image_size!r}"
            )
        text = decoders[size]()
        vision = SiglipVisionConfig(image_size=image_size)
        return cls(vision_config=vision, text_config=text, projection_dim=text.hidden_size)

    @classmethod
    def tiny(cls) -> PaliGemmaConfig:
        """112 thousand parameters with the real structure (multi-query attention, 16 image tokens)."""
        return cls(
            vision_config=SiglipVisionConfig.tiny(),
            text_config=GemmaConfig.tiny(),
            projection_dim=64,
            image_token_index=255,
        )

    @classmethod
    def from_hf_dict(cls, config: dict[str, Any]) -> PaliGemmaConfig:
        """Read a Hugging Face PaliGemma ``config.json`` (already parsed with ``json.load``).

        Missing fields take the values transformers would give them: a missing ``text_config`` or
        ``vision_config`` gets PaliGemma's defaults, a missing key inside one gets the defaults of
        transformers' ``GemmaConfig`` or ``SiglipVisionConfig`` class.
        """
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict parsed from config.json, got {type(config).__name__}")
        if config.get("model_type") != "paligemma":
            raise ValueError(f"model_type must be 'paligemma', got {config.get('model_type')!r}")
        text = _text_config_from_hf(config.get("text_config"))
        vision = _vision_config_from_hf(config.get("vision_config"))
        # Some files keep the special-token ids in text_config only.
        text_json = config.get("text_config") or {}
        values = dict(_HF_PALIGEMMA_DEFAULTS)
        for key in values:
            if config.get(key) is not None:
                values[key] = config[key]
            elif key.endswith("_token_id") and text_json.get(key) is not None:
                values[key] = text_json[key]
        result = cls(vision_config=vision, text_config=text, **values)
        # transformers overwrites a stated num_image_tokens with its own count; a file whose count
        # disagrees with its image and patch sizes is wrong somewhere, so we refuse it.
        for part in ("vision_config", "text_config"):
            stated = (config.get(part) or {}).get("num_image_tokens")
            if stated is not None and stated != result.num_image_tokens:
                raise ValueError(
                    f"{part}.num_image_tokens {stated} != (image_size {vision.image_size} // "
                    f"patch_size {vision.patch_size}) ** 2 = {result.num_image_tokens}"
                )
        return result

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` transformers reads (tested against transformers 5.23)."""
        vision, text = self.vision_config, self.text_config
        return {
            "architectures": ["PaliGemmaForConditionalGeneration"],
            "model_type": "paligemma",
            "hidden_size": text.hidden_size,
            "vocab_size": text.vocab_size,
            "projection_dim": self.projection_dim,
            "image_token_index": self.image_token_index,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "bos_token_id": self.bos_token_id,
            "tie_word_embeddings": True,
            "vision_config": {
                "model_type": "siglip_vision_model",
                **asdict(vision),
                "hidden_act": "gelu_pytorch_tanh",
                "vision_use_head": False,
                "projection_dim": self.projection_dim,
                "num_image_tokens": self.num_image_tokens,
            },
            "text_config": {
                **asdict(text),
                **_text_model_fields(text),
                # transformers >= 5 reads rope_parameters, older versions rope_theta.
                "rope_parameters": {"rope_theta": text.rope_theta, "rope_type": "default"},
                "num_image_tokens": self.num_image_tokens,
                "pad_token_id": self.pad_token_id,
                "eos_token_id": self.eos_token_id,
                "bos_token_id": self.bos_token_id,
            },
        }


def _text_model_fields(text: GemmaConfig) -> dict[str, Any]:
    """The ``text_config`` keys that name the decoder: its model_type and activation (keyed differently)."""
    if isinstance(text, Gemma2Config):
        return {"model_type": "gemma2", "hidden_activation": "gelu_pytorch_tanh", "layer_types": list(text.layer_types)}
    return {"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh"}


def load_config(folder: str | Path) -> PaliGemmaConfig:
    """Read and check the ``config.json`` of a checkpoint folder.

    Errors name the file: a missing file, invalid JSON, or a value ``from_hf_dict`` refuses.
    """
    config_path = Path(folder) / CONFIG_NAME
    if not config_path.is_file():
        raise ValueError(f"no {CONFIG_NAME} in {str(folder)!r}; is it a PaliGemma checkpoint folder?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from error
    try:
        return PaliGemmaConfig.from_hf_dict(config)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{config_path}: {error}") from error


# transformers' defaults (5.23), used to fill missing fields exactly as it does.
_HF_PALIGEMMA_DEFAULTS = {
    "projection_dim": 2048,
    "image_token_index": 256000,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
_HF_GEMMA_CLASS_DEFAULTS = {
    "vocab_size": 256000,
    "hidden_size": 3072,
    "intermediate_size": 24576,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
}
_HF_PALIGEMMA_TEXT_DEFAULTS = {
    **_HF_GEMMA_CLASS_DEFAULTS,
    "hidden_size": 2048,
    "num_hidden_layers": 18,
    "intermediate_size": 16384,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "vocab_size": 257152,
}
_HF_GEMMA2_CLASS_DEFAULTS = {
    **_HF_GEMMA_CLASS_DEFAULTS,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "sliding_window": 4096,
    "layer_types": None,
}
# Keys whose null in config.json means "off", not "missing": a softcap of None caps nothing.
_NULLABLE_GEMMA2_FIELDS = ("attn_logit_softcapping", "final_logit_softcapping", "layer_types")
_HF_SIGLIP_CLASS_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
}
# intermediate_size 4096 is transformers' default for PaliGemma, although the real model has 4304.
_HF_PALIGEMMA_VISION_DEFAULTS = {
    **_HF_SIGLIP_CLASS_DEFAULTS,
    "intermediate_size": 4096,
    "hidden_size": 1152,
    "patch_size": 14,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
}
# "gelu" is the legacy spelling in Gemma configs; transformers maps it to the tanh approximation.
_TANH_GELU = ("gelu_pytorch_tanh", "gelu")


def _text_config_from_hf(text: dict[str, Any] | None) -> GemmaConfig:
    if text is None:
        return GemmaConfig(**_HF_PALIGEMMA_TEXT_DEFAULTS)
    if not isinstance(text, dict):
        raise TypeError(f"text_config must be a JSON object, got {type(text).__name__}")
    model_type = text.get("model_type", "gemma")
    if model_type not in ("gemma", "gemma2"):
        raise ValueError(
            f"text_config.model_type must be 'gemma' (PaliGemma 1) or 'gemma2' (PaliGemma 2), got {model_type!r}"
        )
    activation_key = "hidden_activation" if model_type == "gemma2" else "hidden_act"
    if text.get(activation_key, "gelu_pytorch_tanh") not in _TANH_GELU:
        raise ValueError(f"text_config.{activation_key} must be 'gelu_pytorch_tanh', got {text[activation_key]!r}")
    if text.get("attention_bias", False):
        raise ValueError("text_config.attention_bias=true is not supported: Gemma's projections have no bias")
    defaults = _HF_GEMMA2_CLASS_DEFAULTS if model_type == "gemma2" else _HF_GEMMA_CLASS_DEFAULTS
    values = {key: text[key] for key in defaults if text.get(key) is not None}
    if model_type == "gemma2":
        if "sliding_window" in text and text["sliding_window"] is None:
            raise ValueError("text_config.sliding_window=null is not supported: Gemma 2 needs a window")
        values.update({key: None for key in _NULLABLE_GEMMA2_FIELDS if key in text and text[key] is None})
    rope = text.get("rope_parameters") or text.get("rope_scaling")
    if rope is not None:
        if not isinstance(rope, dict):
            raise TypeError(f"text_config.rope_parameters must be a JSON object, got {rope!r}")
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"text_config: only the default RoPE is supported, got {rope!r}")
        if "rope_theta" in rope:
            stated = values.get("rope_theta")  # transformers < 5 reads this key, >= 5 rope_parameters
            if stated is not None and stated != rope["rope_theta"]:  # nan in both differs too: refused
                raise ValueError(
                    f"text_config.rope_theta ({stated!r}) and text_config.rope_parameters.rope_theta "
                    f"({rope['rope_theta']!r}) disagree"
                )
            values["rope_theta"] = rope["rope_theta"]
    config_class = Gemma2Config if model_type == "gemma2" else GemmaConfig
    return config_class(**{**defaults, **values})


def _vision_config_from_hf(vision: dict[str, Any] | None) -> SiglipVisionConfig:
    if vision is None:
        return SiglipVisionConfig(**_HF_PALIGEMMA_VISION_DEFAULTS)
    if not isinstance(vision, dict):
        raise TypeError(f"vision_config must be a JSON object, got {type(vision).__name__}")
    if vision.get("model_type", "siglip_vision_model") != "siglip_vision_model":
        raise ValueError(f"vision_config.model_type must be 'siglip_vision_model', got {vision['model_type']!r}")
    if vision.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"vision_config.hidden_act must be 'gelu_pytorch_tanh', got {vision['hidden_act']!r}")
    # transformers' SiglipVisionConfig defaults to a pooling head; PaliGemma uses every patch instead.
    if vision.get("vision_use_head", True):
        raise ValueError(
            "vision_config.vision_use_head must be false: PaliGemma feeds every patch to the "
            "decoder and has no pooling head (a missing key means true in transformers)"
        )
    values = {key: vision[key] for key in _HF_SIGLIP_CLASS_DEFAULTS if vision.get(key) is not None}
    return SiglipVisionConfig(**{**_HF_SIGLIP_CLASS_DEFAULTS, **values})


def _check_numbers(config: SiglipVisionConfig | GemmaConfig | PaliGemmaConfig, where: str) -> None:
    """Refuse any field that is not the number its annotation names, or is one out of range.

    An ``int`` field takes an int that is not a bool, positive unless it is a token id (those are
    checked against the vocabulary). A ``float`` field takes a finite positive int or float, not a bool;
    a ``float | None`` field takes the same, or None.
    """
    prefix = f"{where}." if where else ""
    for f in fields(config):
        name, value = prefix + f.name, getattr(config, f.name)
        if f.type == "float | None" and value is None:
            continue
        if f.type == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 1 and f.name not in TOKEN_ID_FIELDS:
                raise ValueError(f"{name} must be positive, got {value}")
        elif f.type in ("float", "float | None"):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):  # written so that nan fails it
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def _check_epsilon(value: float, name: str) -> None:
    """A normalization's epsilon keeps a division by a tiny variance finite; at 1 or more it is not small."""
    if not value < 1:
        raise ValueError(f"{name} must be a small positive number below 1 (e.g. 1e-6), got {value!r}")
