"""The SigLIP vision encoder: a Vision Transformer that turns an image into P patch vectors.

Book chapters: "CNN vs ViT" and "Transformer blocks" (ViT, Dosovitskiy et al. 2021, section 3.1;
SigLIP, Zhai et al. 2023). PaliGemma keeps every patch vector and drops SigLIP's pooling head.

Module and attribute names mirror the checkpoint keys under ``vision_tower.vision_model.``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pgemma.attention import attention
from pgemma.config import SiglipVisionConfig


class SiglipVisionEmbeddings(nn.Module):
    """Cut the image into patches, project each to D, add a learned position embedding per patch."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        # A convolution whose kernel and stride are both the patch size is a linear map applied to
        # each non-overlapping patch: the ViT patch embedding in one call.
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """float[B, C, I, I] -> float[B, P, D], patches in row-major order."""
        patches = self.patch_embedding(pixel_values)  # (B, D, I/p, I/p)
        patches = patches.flatten(2).transpose(1, 2)  # (B, P, D)
        return patches + self.position_embedding.weight  # (B, P, D)


class SiglipAttention(nn.Module):
    """Bidirectional multi-head self-attention: every patch sees every patch."""

    def __init__(self, config: SiglipVisionConfig, use_sdpa: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.use_sdpa = config.num_attention_heads, config.head_dim, use_sdpa
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, attentions: list[torch.Tensor] | None = None) -> torch.Tensor:
        """float[B, P, D] -> float[B, P, D].

        Args:
            attentions: a list to append the attention weights float[B, N, P, P] to (rows sum to 1),
                computed on the explicit path even when the layer uses SDPA; None: not formed.
        """
        batch, length, _ = x.shape
        heads = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(heads).transpose(1, 2)  # (B, N, P, H)
        k = self.k_proj(x).view(heads).transpose(1, 2)  # (B, N, P, H)
        v = self.v_proj(x).view(heads).transpose(1, 2)  # (B, N, P, H)
        if attentions is None:
            out = attention(q, k, v, use_sdpa=self.use_sdpa)  # (B, N, P, H)
        else:
            out, weights = attention(q, k, v, return_weights=True)  # (B, N, P, H), (B, N, P, P)
            attentions.append(weights)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))  # (B, P, D)


class SiglipMLP(nn.Module):
    """Two linear layers with GELU between (the tanh approximation, as the model was trained)."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: SiglipVisionConfig, use_sdpa: bool = False):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config, use_sdpa)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor, attentions: list[torch.Tensor] | None = None) -> torch.Tensor:
        """float[B, P, D] -> float[B, P, D]; ``attentions`` as in ``SiglipAttention.forward``."""
        x = x + self.self_attn(self.layer_norm1(x), attentions)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipVisionConfig, use_sdpa: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config, use_sdpa) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, attentions: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """float[B, P, D] -> the hidden states: the input, then every layer's output (L + 1 of them).

        ``attentions``: a list to append every layer's attention weights float[B, N, P, P] to, in
        order (the explicit path, even with SDPA); None: none are formed.
        """
        hidden_states = [x]
        for layer in self.layers:
            hidden_states.append(layer(hidden_states[-1], attentions))
        return hidden_states


class SiglipVisionTransformer(nn.Module):
    """Patch embeddings, the encoder stack, and a final LayerNorm. No pooling head."""

    def __init__(self, config: SiglipVisionConfig, use_sdpa: bool = False):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config, use_sdpa)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, pixel_values: torch.Tensor, attentions: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """float[B, C, I, I] -> (patch features float[B, P, D], the encoder's hidden states).

        The hidden states (patch embeddings, then each layer's output) are kept for inspection, and
        so are the attention weights when ``attentions`` is a list (see ``SiglipEncoder.forward``).
        """
        hidden_states = self.encoder(self.embeddings(pixel_values), attentions)
        return self.post_layernorm(hidden_states[-1]), hidden_states


class SiglipVisionModel(nn.Module):
    """A thin wrapper so that parameter names read ``vision_model.*``, as in the checkpoints."""

    def __init__(self, config: SiglipVisionConfig, use_sdpa: bool = False):
        super().__init__()
        self.vision_model = SiglipVisionTransformer(config, use_sdpa)

    def forward(
        self, pixel_values: torch.Tensor, attentions: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.vision_model(pixel_values, attentions)
