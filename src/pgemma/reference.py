"""transformers as the reference: build tiny random checkpoints offline and compare layer by layer.

Book chapter: "Assembling PaliGemma" (and the parity tests in tests/).

``transformers`` is not a dependency of the package (the book and the tests install it), so it is
imported inside the functions. Tested with 5.23 and, by `make test-oldest`, with 4.48.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgemma.config import PaliGemmaConfig
from pgemma.paligemma import PaliGemmaForConditionalGeneration


def build_reference_checkpoint(
    path: str | Path,
    config: PaliGemmaConfig,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    weight_std: float | None = None,
) -> Any:
    """Write a randomly initialized transformers ``PaliGemmaForConditionalGeneration`` to ``path``.

    Norm weights and biases are randomized too (transformers starts them at 0 or 1), so that a
    forgotten ``1 + weight`` or bias cannot hide. ``weight_std`` redraws every matrix from
    N(0, weight_std) (transformers draws them with a standard deviation of 0.02): with 0.1, attention
    scores and logits grow large enough for Gemma 2's soft-caps to change them. Nothing is downloaded.

    Returns:
        The transformers model, in eval mode.
    """
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.PaliGemmaConfig.from_dict(config.to_hf_dict())
    model = transformers.PaliGemmaForConditionalGeneration(hf_config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if param.ndim == 1:
                    center = 1.0 if isinstance(module, nn.LayerNorm) and name == "weight" else 0.0
                    param.copy_(center + 0.1 * torch.randn(param.shape, generator=generator))
                elif weight_std is not None:
                    param.copy_(weight_std * torch.randn(param.shape, generator=generator))
    model = model.to(dtype).eval()
    model.save_pretrained(path)
    return model


def load_reference_model(path: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """Load a checkpoint with transformers, with the eager attention path (exact comparisons).

    transformers names `from_pretrained`'s dtype argument `dtype` from 4.56 on and `torch_dtype`
    before (4.48 is the oldest release the book supports)."""
    import transformers
    from packaging.version import Version  # a dependency of transformers

    dtype_argument = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        path, attn_implementation="eager", **{dtype_argument: dtype}
    )
    return model.eval()


@torch.no_grad()
def compare_layers(
    model: PaliGemmaForConditionalGeneration, hf_model: Any, inputs: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Run both models on the same inputs and return the largest absolute difference per stage.

    Args:
        model: a pgemma model.
        hf_model: transformers' model with the same weights (``load_reference_model``).
        inputs: ``input_ids``, ``pixel_values`` and optionally ``attention_mask`` and
            ``token_type_ids``, as for both forwards.
    Returns:
        Stage name -> max |pgemma - transformers|, in pipeline order: ``patch_embeddings``,
        ``vision_layer_i``, ``image_features`` (projector), ``decoder_input`` (merged, scaled
        embeddings), ``decoder_layer_i`` (all but the last), ``final_norm`` (the last layer, then
        the final norm: transformers only returns the two together), ``logits``. The first large
        number is the culprit; ``format_comparison`` prints the table.
    """
    ours = model(**inputs, output_hidden_states=True)
    vision = hf_model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
    image_features = hf_model.model.get_image_features(inputs["pixel_values"]).pooler_output
    theirs = hf_model(**inputs, output_hidden_states=True)

    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a.float() - b.float()).abs().max().item()

    table = {"patch_embeddings": diff(ours.hidden_states.vision[0], vision[0])}
    for i, (a, b) in enumerate(zip(ours.hidden_states.vision[1:], vision[1:])):
        table[f"vision_layer_{i}"] = diff(a, b)
    table["image_features"] = diff(ours.hidden_states.image_features, image_features)
    table["decoder_input"] = diff(ours.hidden_states.decoder[0], theirs.hidden_states[0])
    layers = model.config.text_config.num_hidden_layers
    for i, (a, b) in enumerate(zip(ours.hidden_states.decoder[1:layers], theirs.hidden_states[1:layers])):
        table[f"decoder_layer_{i}"] = diff(a, b)
    final = model.language_model.model.norm(ours.hidden_states.decoder[-1])
    table["final_norm"] = diff(final, theirs.hidden_states[-1])
    table["logits"] = diff(ours.logits, theirs.logits)
    return table


def format_comparison(table: dict[str, float]) -> str:
    """The table from ``compare_layers`` as aligned text, one stage per line."""
    width = max(map(len, table))
    return "\n".join(f"{stage:<{width}}  {value:.3e}" for stage, value in table.items())
