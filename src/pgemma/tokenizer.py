"""Text <-> token ids, with PaliGemma's special tokens. Book chapter: "Tensors, patches and tokens".

PaliGemma reuses Gemma's SentencePiece vocabulary (256,000 pieces) and adds tokens that are
never split into smaller pieces:

    <pad> 0   <eos> 1   <bos> 2   <unk> 3      control tokens
    <image>                                     one placeholder per image patch in the prompt
    <loc0000> .. <loc1023>                      box coordinates, quantized to 1024 bins
    <seg000> .. <seg127>                        segmentation-mask codes (not used by pgemma)

`PaliGemmaTokenizer` wraps one of two backends that read the files a real checkpoint ships:
`tokenizer.json` (the `tokenizers` library, preferred) or `tokenizer.model` (SentencePiece).
`train_tokenizer` trains a small byte-pair-encoding (BPE) vocabulary with the same special
tokens, for the book's toy models.

Not supported: adding tokens after loading; chat templates; BOS/EOS are never added by
`encode` (the processor places them explicitly, as PaliGemma's prompt format requires).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pgemma.loc_tokens import NUM_LOC_TOKENS

PAD, EOS, BOS, UNK, IMAGE = "<pad>", "<eos>", "<bos>", "<unk>", "<image>"
# Order matters: train_tokenizer gives them ids 0, 1, 2, 3, 4 as in Gemma (pad 0, eos 1, bos 2).
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK, IMAGE)
NUM_SEG_TOKENS = 128
LOC_TOKENS = tuple(f"<loc{i:04d}>" for i in range(NUM_LOC_TOKENS))
SEG_TOKENS = tuple(f"<seg{i:03d}>" for i in range(NUM_SEG_TOKENS))

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"

# Matches every special token name, so text can be cut around them before subword encoding.
_SPECIAL_PATTERN = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
# Matches every token that is never split, for cutting them out of training text.
_RESERVED_PATTERN = re.compile(r"<(?:pad|eos|bos|unk|image|loc\d{4}|seg\d{3})>")
# SentencePiece's word-boundary marker: "a cat" is stored as the pieces "a", "▁cat".
_SPACE = "\u2581"


def _register_location_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """Make every <loc>/<seg> token of the vocabulary a whole, non-special added token.

    In a tokenizer.json they may be plain vocabulary entries (which the subword model would
    spell "<", "loc", ...) or special added tokens (which decode(skip_special_tokens=True) would
    drop, losing the boxes); transformers' PaliGemmaProcessor fixes this the same way, with
    `tokenizer.add_tokens(EXTRA_TOKENS)`. Returns the tokenizer unchanged when nothing needs it.
    """
    present = {t: i for t in LOC_TOKENS + SEG_TOKENS if (i := tokenizer.token_to_id(t)) is not None}
    if all(
        tokenizer.encode(t, add_special_tokens=False).ids == [i] and tokenizer.decode([i]) == t
        for t, i in present.items()
    ):
        return tokenizer
    state = json.loads(tokenizer.to_str())
    added = {entry["content"]: entry for entry in state["added_tokens"]}
    for token, token_id in present.items():
        entry = added.setdefault(
            token,
            {
                "id": token_id,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
            },
        )
        entry["special"] = False
    state["added_tokens"] = sorted(added.values(), key=lambda entry: entry["id"])
    return Tokenizer.from_str(json.dumps(state))


class _TokenizersBackend:
    """A `tokenizers.Tokenizer` (the format of tokenizer.json)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = _register_location_tokens(tokenizer)

    def encode(self, text: str) -> list[int]:
        # The file's special tokens are matched whole before the subword model sees the text.
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def save(self, folder: Path) -> str:
        self.tokenizer.save(str(folder / TOKENIZER_JSON))
        return TOKENIZER_JSON


class _SentencePieceBackend:
    """A SentencePiece model (the format of tokenizer.model).

    Note: PaliGemma's tokenizer.model holds the 256,000 Gemma pieces plus the <loc> and <seg>
    tokens, but not <image>; like transformers' PaliGemmaProcessor we then give <image> the
    next free id (257152 for the real model).
    """

    def __init__(self, processor: spm.SentencePieceProcessor) -> None:
        self.processor = processor
        size = processor.get_piece_size()
        self.special_ids: dict[str, int] = {}
        for name in SPECIAL_TOKENS:
            piece_id = processor.piece_to_id(name)
            if processor.id_to_piece(piece_id) == name:
                self.special_ids[name] = piece_id
        if IMAGE not in self.special_ids:
            self.special_ids[IMAGE] = size
        self.special_names = {i: name for name, i in self.special_ids.items()}

    def encode(self, text: str) -> list[int]:
        # SentencePiece treats "<bos>" typed in text as plain characters; we cut text around the
        # special names first so both backends agree. <loc>/<seg> are SentencePiece
        # "user-defined" pieces, which it never splits by itself.
        ids: list[int] = []
        for part in _SPECIAL_PATTERN.split(text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self.processor.encode(part))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        # Runs of ordinary ids are decoded together (so multi-byte characters split over
        # byte-fallback pieces come back whole); special ids are written out or dropped.
        text, run = [], []
        for i in ids:
            if i in self.special_names:
                text.append(self.processor.decode(run))
                run = []
                if not skip_special_tokens:
                    text.append(self.special_names[i])
            else:
                run.append(i)
        text.append(self.processor.decode(run))
        return "".join(text)

    def token_to_id(self, token: str) -> int | None:
        if token in self.special_ids:
            return self.special_ids[token]
        piece_id = self.processor.piece_to_id(token)
        return piece_id if self.processor.id_to_piece(piece_id) == token else None

    @property
    def vocab_size(self) -> int:
        return max(self.processor.get_piece_size(), self.special_ids[IMAGE] + 1)

    def save(self, folder: Path) -> str:
        (folder / TOKENIZER_MODEL).write_bytes(self.processor.serialized_model_proto())
        return TOKENIZER_MODEL


class PaliGemmaTokenizer:
    """Subword tokenizer with PaliGemma's special tokens, backed by tokenizers or SentencePiece.

    Args:
        tokenizer: a `tokenizers.Tokenizer` or a loaded `sentencepiece.SentencePieceProcessor`
            whose vocabulary holds <pad>, <eos>, <bos>, <unk>, <image> and <loc0000>..<loc1023>.
    """

    def __init__(self, tokenizer: Tokenizer | spm.SentencePieceProcessor) -> None:
        if isinstance(tokenizer, Tokenizer):
            self._backend: _TokenizersBackend | _SentencePieceBackend = _TokenizersBackend(tokenizer)
        elif isinstance(tokenizer, spm.SentencePieceProcessor):
            self._backend = _SentencePieceBackend(tokenizer)
        else:
            raise TypeError(
                "PaliGemmaTokenizer wraps a tokenizers.Tokenizer or a "
                f"sentencepiece.SentencePieceProcessor, got {type(tokenizer).__name__}"
            )
        missing = [t for t in SPECIAL_TOKENS + LOC_TOKENS if self._backend.token_to_id(t) is None]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"tokenizer is missing PaliGemma's special tokens: {shown}")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PaliGemmaTokenizer:
        """Load tokenizer.json (preferred) or tokenizer.model from a checkpoint folder."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"tokenizer folder {str(folder)!r} does not exist or is not a folder")
        json_path, model_path = folder / TOKENIZER_JSON, folder / TOKENIZER_MODEL
        if json_path.is_file():
            try:
                backend: Tokenizer | spm.SentencePieceProcessor = Tokenizer.from_file(str(json_path))
            except Exception as error:  # tokenizers raises a bare Exception on a bad file
                raise ValueError(f"{json_path} is not a valid tokenizer.json file: {error}") from None
            path = json_path
        elif model_path.is_file():
            backend = spm.SentencePieceProcessor()
            try:
                backend.load(str(model_path))
            except (OSError, RuntimeError) as error:
                raise ValueError(f"{model_path} is not a valid SentencePiece model: {error}") from None
            path = model_path
        else:
            raise ValueError(f"no tokenizer in {str(folder)!r}: expected {TOKENIZER_JSON} or {TOKENIZER_MODEL}")
        try:
            return cls(backend)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the tokenizer file plus the small configs transformers' AutoTokenizer reads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        filename = self._backend.save(folder)
        special_map = {"pad_token": PAD, "eos_token": EOS, "bos_token": BOS, "unk_token": UNK}
        config = {
            # A tokenizer.json is read as is; transformers converts a tokenizer.model with its
            # GemmaTokenizer, which needs the protobuf package.
            "tokenizer_class": "PreTrainedTokenizerFast" if filename == TOKENIZER_JSON else "GemmaTokenizer",
            **special_map,
            "add_bos_token": False,
            "add_eos_token": False,
            "padding_side": "left",
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special names such as "<image>" or "<loc0123>" become one id each.

        No <bos> or <eos> is added.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate: Python's stand-in for an undecodable byte
            raise ValueError(
                f"text {text[:40]!r} is not valid Unicode ({error.reason} at position {error.start})"
            ) from None
        return self._backend.encode(text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. <loc>/<seg> tokens are kept: they are the model's detection answer."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self._backend.decode(ids, skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        """The id of one token, e.g. token_to_id("<loc0123>")."""
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    @property
    def pad_id(self) -> int:
        return self.token_to_id(PAD)

    @property
    def eos_id(self) -> int:
        return self.token_to_id(EOS)

    @property
    def bos_id(self) -> int:
        return self.token_to_id(BOS)

    @property
    def image_id(self) -> int:
        return self.token_to_id(IMAGE)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's embedding needs at least this)."""
        return self._backend.vocab_size


def _training_pieces(texts: Iterable[str]) -> Iterator[str]:
    """Text between reserved tokens: those never take part in subword merges."""
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer expects strings, got {type(text).__name__}")
        yield from (piece for piece in _RESERVED_PATTERN.split(text) if piece)


def train_tokenizer(texts: Iterable[str], vocab_size: int, seg_tokens: bool = False) -> PaliGemmaTokenizer:
    """Train a small BPE tokenizer with PaliGemma's special tokens at fixed, leading ids.

    Args:
        texts: training text, e.g. captions and answers.
        vocab_size: total ids, special tokens included; fewer if the text has fewer merges.
        seg_tokens: also reserve <seg000>..<seg127>.
    Returns:
        A tokenizer with <pad> 0, <eos> 1, <bos> 2, <unk> 3, <image> 4, <loc0000> 5 .. <loc1023> 1028.
    Note: Gemma's SentencePiece model falls back to bytes for unseen characters; ours maps
    characters outside printable ASCII that the text never shows to <unk>.
    """
    reserved = list(SPECIAL_TOKENS + LOC_TOKENS + (SEG_TOKENS if seg_tokens else ()))
    # Every printable ASCII character gets an id, with the space written as "▁".
    alphabet = sorted(set(string.printable) - {" "} | {_SPACE})
    if not isinstance(vocab_size, int) or vocab_size < len(reserved) + len(alphabet):
        raise ValueError(
            f"vocab_size must be at least {len(reserved) + len(alphabet)} "
            f"({len(reserved)} reserved tokens + {len(alphabet)} characters), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # Split before each space and write it as "▁" (SentencePiece style), so decode restores
    # spaces; no "▁" is prepended to the first word, like Gemma (add_dummy_prefix=False).
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="never")
    tokenizer.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=reserved, initial_alphabet=alphabet, show_progress=False
    )
    # The trainer registers every reserved token as "special"; PaliGemmaTokenizer then turns
    # <loc>/<seg> into ordinary (kept on decode) unsplittable tokens.
    tokenizer.train_from_iterator(_training_pieces(texts), trainer)
    return PaliGemmaTokenizer(tokenizer)
