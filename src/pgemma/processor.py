"""Images and prompts in, model-ready tensors out. Book chapter: "The PaliGemma processor".

PaliGemma sees one image and one line of text. The processor turns them into the tensors
the model takes, in named steps that the chapter walks through one by one:

    image:  load_image -> resize (bicubic, I x I) -> rescale (x / 255) -> normalize ((x - 0.5) / 0.5)
            -> channels first                                                 pixel_values float[B, 3, I, I]
    text:   build_prompt: "<image>" * P + "<bos>" + prompt + "\\n"   (+ suffix + "<eos>" when training)
            -> tokenize -> pad on the left                              input_ids int64[B, T]

The prompt (image tokens, <bos>, the task and the "\\n") is the *prefix*: every prefix token
attends to every other. The *suffix* is the answer the model learns to write, one token after
another. Two per-token rows record this split (worked example, P = 2, prompt "hi",
suffix "yo"):

    tokens           <pad> <image> <image> <bos>  hi   \\n    yo  <eos>
    attention_mask     0      1       1      1     1    1     1     1
    token_type_ids     0      0       0      0     0    0     1     1
    labels          -100   -100    -100   -100  -100 -100    yo  <eos>

`load_image` takes a file path, a PIL image, a numpy array or a torch tensor, turns it upright
by its EXIF orientation and makes it 8-bit RGB; `pgemma.images` says what it accepts and how.

Batches are padded on the LEFT so that every row's last token sits in the last column, which
is where generation appends the next one.

Detection answers are boxes written as four <locNNNN> tokens: `pgemma.loc_tokens` converts
between pixels and tokens.

A checkpoint folder's processor (`load_processor`) is built from the model's validated config
(`PaliGemmaProcessor.from_config`), the same one the model is built from.

Not supported: several images per prompt; images of other sizes than the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from pgemma.config import CONFIG_NAME, IGNORE_INDEX, PaliGemmaConfig, load_config
from pgemma.images import MAX_IMAGE_PIXELS, ImageInput, image_batch, load_image
from pgemma.tokenizer import BOS, EOS, IMAGE, PAD, SPECIAL_TOKENS, PaliGemmaTokenizer

IMAGE_MEAN = 0.5  # SigLIP maps pixels to [-1, 1]: (x - 0.5) / 0.5 on all three channels
IMAGE_STD = 0.5
RESCALE_FACTOR = 1 / 255


class ProcessorBatch(NamedTuple):
    """What `PaliGemmaProcessor` returns; the field names are the model's argument names."""

    input_ids: torch.Tensor  # int64[B, T]
    attention_mask: torch.Tensor  # int64[B, T], 1 real token, 0 padding
    token_type_ids: torch.Tensor  # int64[B, T], 0 image + prefix, 1 suffix
    pixel_values: torch.Tensor  # float32[B, 3, I, I]
    labels: torch.Tensor | None  # int64[B, T], -100 outside the suffix; None without suffixes


class PaliGemmaProcessor:
    """Turns images and prompts into a `ProcessorBatch` for PaliGemmaForConditionalGeneration.

    Args:
        tokenizer: the checkpoint's tokenizer.
        image_size: I, the side of the square images the vision tower takes (224 for PaliGemma-224).
        num_image_tokens: P, image patches = <image> tokens per prompt ((224 // 14) ** 2 = 256).
        max_length: the model's context; longer prompts are refused. None: no limit.
        max_image_pixels: larger images are refused before they are decoded.
    """

    def __init__(
        self,
        tokenizer: PaliGemmaTokenizer,
        image_size: int,
        num_image_tokens: int,
        max_length: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        if not isinstance(tokenizer, PaliGemmaTokenizer):
            raise TypeError(f"tokenizer must be a PaliGemmaTokenizer, got {type(tokenizer).__name__}")
        for name, value in [("image_size", image_size), ("num_image_tokens", num_image_tokens)]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_length is not None and max_length <= num_image_tokens + 2:
            raise ValueError(f"max_length {max_length} leaves no room for text after {num_image_tokens} image tokens")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.max_image_pixels = max_image_pixels

    @classmethod
    def from_config(cls, config: PaliGemmaConfig, tokenizer: PaliGemmaTokenizer) -> PaliGemmaProcessor:
        """The processor a model of `config` takes: its image size, image tokens and context.

        Refuses a tokenizer whose <image>, <eos> or <pad> id is not the config's, or that has more
        ids than the model embeds: its prompts would be misread silently.
        """
        processor = cls(
            tokenizer,
            config.vision_config.image_size,
            config.num_image_tokens,
            max_length=config.text_config.max_position_embeddings,
        )
        for name, expected, token, found in [
            ("image_token_index", config.image_token_index, IMAGE, tokenizer.image_id),
            ("eos_token_id", config.eos_token_id, EOS, tokenizer.eos_id),
            ("pad_token_id", config.pad_token_id, PAD, tokenizer.pad_id),
        ]:
            if found != expected:
                raise ValueError(
                    f"{name} is {expected} but the tokenizer's {token} is {found}; "
                    "the tokenizer does not belong to this model"
                )
        if tokenizer.vocab_size > config.text_config.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model embeds only "
                f"text_config.vocab_size={config.text_config.vocab_size}; the tokenizer does not "
                "belong to this model"
            )
        return processor

    # ---- Images ------------------------------------------------------------------------------

    def load_image(self, image: ImageInput) -> Image.Image:
        """Open and validate one image; returns it upright, as an 8-bit RGB PIL image.

        Args:
            image: a file path (str or Path), a PIL image, a uint8 or uint16 numpy array [H, W] or
                [H, W, C] (channels last) or torch tensor [H, W] or [C, H, W] (channels first).
                `pgemma.images` lists what is accepted, refused, and how it becomes RGB.
        """
        return load_image(image, self.max_image_pixels)

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize to I x I with bicubic interpolation, ignoring the aspect ratio (as PaliGemma does)."""
        return image.resize((self.image_size, self.image_size), resample=Image.Resampling.BICUBIC)

    def rescale(self, image: Image.Image) -> np.ndarray:
        """uint8 pixels [0, 255] -> float32 [0, 1], shape [I, I, 3]."""
        return np.asarray(image, dtype=np.float32) * np.float32(RESCALE_FACTOR)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """[0, 1] -> [-1, 1], the range SigLIP was trained on."""
        return (pixels - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)

    def preprocess_image(self, image: ImageInput) -> torch.Tensor:
        """All image steps for one image: float[3, I, I]."""
        pixels = self.normalize(self.rescale(self.resize(self.load_image(image))))  # (I, I, C)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (C, I, I)

    # ---- Text --------------------------------------------------------------------------------

    def build_prompt(self, prompt: str) -> str:
        """The prefix as text: P image placeholders, <bos>, the prompt and a newline."""
        return IMAGE * self.num_image_tokens + BOS + prompt + "\n"

    def tokenize(self, prompt: str, suffix: str | None = None) -> tuple[list[int], list[int], list[int]]:
        """One example's input_ids, token_type_ids and labels (before padding)."""
        _check_text("prompt", prompt)
        if suffix is not None:
            _check_text("suffix", suffix)
        prefix = self.tokenizer.encode(self.build_prompt(prompt))
        answer = [] if suffix is None else self.tokenizer.encode(suffix) + [self.tokenizer.eos_id]
        input_ids = prefix + answer
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise ValueError(
                f"prompt {prompt[:40]!r} is {len(input_ids)} tokens with the image and suffix, "
                f"longer than the model's context of {self.max_length}"
            )
        token_type_ids = [0] * len(prefix) + [1] * len(answer)
        labels = [IGNORE_INDEX] * len(prefix) + answer
        return input_ids, token_type_ids, labels

    def pad(self, rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
        """Left-pad rows of different lengths to one int64[B, T] tensor."""
        length = max(len(row) for row in rows)
        return torch.tensor([[value] * (length - len(row)) + list(row) for row in rows], dtype=torch.long)

    # ---- Both --------------------------------------------------------------------------------

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        prompts: str | Sequence[str],
        suffixes: str | Sequence[str] | None = None,
    ) -> ProcessorBatch:
        """Process a batch: one image per prompt, and optionally the answers (suffixes) to train on.

        Args:
            images: one image, or a list or tuple of images, one per prompt. An image is a file
                path (str or Path), a PIL image, a uint8 or uint16 numpy array [H, W] or [H, W, C]
                (channels last) or torch tensor [H, W] or [C, H, W] (channels first); an array or a
                tensor is always one image (split a 4-D batch with list(batch)). See `pgemma.images`.
            prompts: one str, or a list or tuple of them.
            suffixes: the answers to train on, one per prompt; None at inference (labels is None).
        Raises:
            TypeError: an image that is none of these (bytes, None, a nested list, a 4-D array...).
            ValueError: counts that differ, a bad image file or mode, a prompt too long.
        """
        images = image_batch(images)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if suffixes is not None:
            suffixes = [suffixes] if isinstance(suffixes, str) else list(suffixes)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; pass one image per prompt")
        if len(prompts) == 0:
            raise ValueError("got no prompts; pass at least one image and one prompt")
        if suffixes is not None and len(suffixes) != len(prompts):
            raise ValueError(f"got {len(suffixes)} suffixes for {len(prompts)} prompts")
        answers = [None] * len(prompts) if suffixes is None else suffixes
        rows = [self.tokenize(prompt, answer) for prompt, answer in zip(prompts, answers)]
        input_ids, token_type_ids, labels = (list(column) for column in zip(*rows))
        return ProcessorBatch(
            input_ids=self.pad(input_ids, self.tokenizer.pad_id),  # (B, T)
            attention_mask=self.pad([[1] * len(row) for row in input_ids], 0),  # (B, T)
            token_type_ids=self.pad(token_type_ids, 0),  # (B, T)
            pixel_values=torch.stack([self.preprocess_image(image) for image in images]),  # (B, C, I, I)
            labels=None if suffixes is None else self.pad(labels, IGNORE_INDEX),  # (B, T)
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids; <loc>/<seg> tokens are kept, control tokens dropped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _check_text(name: str, text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    found = [token for token in SPECIAL_TOKENS if token in text]
    if found:
        raise ValueError(f"{name} {text[:40]!r} contains {found[0]}; the processor places special tokens itself")


# ---- Loading ----------------------------------------------------------------------------------


def load_processor(path: str | Path) -> PaliGemmaProcessor:
    """Build the processor of a checkpoint folder: config.json plus tokenizer.json or tokenizer.model.

    config.json is read by `pgemma.config.load_config`, as for the model.
    """
    folder = Path(path)
    config = load_config(folder)
    tokenizer = PaliGemmaTokenizer.from_pretrained(folder)
    try:
        return PaliGemmaProcessor.from_config(config, tokenizer)
    except ValueError as error:
        raise ValueError(f"{folder / CONFIG_NAME}: {error}") from None
