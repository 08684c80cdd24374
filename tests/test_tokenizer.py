"""Tests for pgemma.tokenizer: special tokens, round trips, both backends, transformers parity."""

import json

import pytest
from tokenizers import Tokenizer, models

from pgemma.tokenizer import (
    LOC_TOKENS,
    SEG_TOKENS,
    SPECIAL_TOKENS,
    UNK,
    PaliGemmaTokenizer,
    train_tokenizer,
)

TEXTS = [
    "a red cat",
    "what color is the cat?\nred",
    "  two  spaces, then\ttab and newline\n",
    "<loc0123><loc0456><loc0789><loc1023> cat",
]


@pytest.fixture(scope="module")
def tokenizer(make_tokenizer) -> PaliGemmaTokenizer:
    return make_tokenizer()


@pytest.fixture(scope="module")
def sp_tokenizer(make_sentencepiece_tokenizer) -> PaliGemmaTokenizer:
    return make_sentencepiece_tokenizer()


def test_special_ids_match_gemma_layout(tokenizer):
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, 1, 2)
    assert tokenizer.token_to_id(UNK) == 3
    assert tokenizer.image_id == 4
    assert [tokenizer.token_to_id(t) for t in LOC_TOKENS] == list(range(5, 5 + 1024))
    assert tokenizer.vocab_size <= 1400


def test_seg_tokens_are_optional(make_tokenizer):
    with_seg = make_tokenizer(seg_tokens=True)
    assert with_seg.token_to_id("<seg000>") == 5 + 1024
    assert with_seg.token_to_id(SEG_TOKENS[-1]) == 5 + 1024 + 127
    with pytest.raises(ValueError, match="<seg000>"):
        make_tokenizer().token_to_id("<seg000>")


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tokenizer.decode(ids) == text


def test_subwords_shorter_than_characters(tokenizer):
    assert len(tokenizer.encode("the quick brown fox")) < len("the quick brown fox") / 2


def test_specials_are_single_ids_and_never_split(tokenizer):
    for token in SPECIAL_TOKENS + LOC_TOKENS[::97]:
        assert tokenizer.encode(token) == [tokenizer.token_to_id(token)]
    ids = tokenizer.encode("a cat<loc0123> sat")
    assert ids.count(tokenizer.token_to_id("<loc0123>")) == 1
    assert tokenizer.encode("a cat<loc0123> sat") == (tokenizer.encode("a cat") + [5 + 123] + tokenizer.encode(" sat"))


def test_no_bos_or_eos_added(tokenizer):
    ids = tokenizer.encode("a red cat")
    assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids


def test_decode_skips_control_tokens_but_keeps_locations(tokenizer):
    ids = [tokenizer.image_id, tokenizer.bos_id, *tokenizer.encode("<loc0001> cat"), tokenizer.eos_id, 0]
    assert tokenizer.decode(ids) == "<loc0001> cat"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<image><bos><loc0001> cat<eos><pad>"


def test_unseen_characters_become_unk(tokenizer):
    assert tokenizer.encode("\u00e9") == [tokenizer.token_to_id(UNK)]


def test_save_load_round_trip_tokenizers_backend(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    loaded = PaliGemmaTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.vocab_size == tokenizer.vocab_size


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_backend_round_trip(sp_tokenizer, text):
    assert sp_tokenizer.decode(sp_tokenizer.encode(text)) == text


def test_sentencepiece_backend_specials(sp_tokenizer):
    assert (sp_tokenizer.pad_id, sp_tokenizer.eos_id, sp_tokenizer.bos_id) == (0, 1, 2)
    ids = sp_tokenizer.encode("<image><bos>a cat<loc0123> sat\n")
    assert ids[:2] == [sp_tokenizer.image_id, sp_tokenizer.bos_id]
    assert sp_tokenizer.token_to_id("<loc0123>") in ids
    assert sp_tokenizer.decode(ids) == "a cat<loc0123> sat\n"
    assert sp_tokenizer.decode(ids, skip_special_tokens=False) == "<image><bos>a cat<loc0123> sat\n"


def test_sentencepiece_byte_fallback_restores_unseen_characters(sp_tokenizer):
    assert sp_tokenizer.decode(sp_tokenizer.encode("caf\u00e9 \u732b")) == "caf\u00e9 \u732b"


def test_sentencepiece_without_image_piece_appends_it(train_sentencepiece):
    # PaliGemma's tokenizer.model has no <image> piece; it gets the next free id.
    processor = train_sentencepiece(image_piece=False)
    tokenizer = PaliGemmaTokenizer(processor)
    assert tokenizer.image_id == processor.get_piece_size()
    assert tokenizer.vocab_size == processor.get_piece_size() + 1
    assert tokenizer.encode("<image><image>") == [tokenizer.image_id] * 2


def test_save_load_round_trip_sentencepiece_backend(sp_tokenizer, tmp_path):
    sp_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").is_file()
    loaded = PaliGemmaTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded.encode(text) == sp_tokenizer.encode(text)


def test_tokenizer_json_preferred_over_model(tokenizer, sp_tokenizer, tmp_path):
    sp_tokenizer.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = PaliGemmaTokenizer.from_pretrained(tmp_path)
    assert loaded.encode("the quick brown fox") == tokenizer.encode("the quick brown fox")


def test_folder_without_tokenizer_file(tmp_path):
    with pytest.raises(ValueError, match="expected tokenizer.json or tokenizer.model"):
        PaliGemmaTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        PaliGemmaTokenizer.from_pretrained(tmp_path / "nope")


def test_corrupt_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is not a valid"):
        PaliGemmaTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="tokenizer.model is not a valid SentencePiece model"):
        PaliGemmaTokenizer.from_pretrained(tmp_path)


def test_missing_special_tokens_named(tmp_path):
    plain = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "hello": 2}, unk_token="<pad>"))
    plain.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer.json: .*missing .*<bos>"):
        PaliGemmaTokenizer.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="got dict"):
        PaliGemmaTokenizer({})


def test_bad_arguments(tokenizer, corpus):
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_tokenizer(corpus, vocab_size=100)
    with pytest.raises(TypeError, match="expects a str"):
        tokenizer.encode(["a", "b"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.token_to_id("<nope>")


def test_transformers_reads_saved_tokenizer(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS + ["<image><image><bos>caption en\n"]:
        assert hf(text, add_special_tokens=False).input_ids == tokenizer.encode(text)
        assert hf.decode(tokenizer.encode(text), skip_special_tokens=True) == tokenizer.decode(tokenizer.encode(text))
    assert (hf.pad_token_id, hf.eos_token_id, hf.bos_token_id) == (0, 1, 2)


def _rewrite_loc_entries(tokenizer: PaliGemmaTokenizer, folder, keep: bool, special: bool) -> None:
    """Save `tokenizer` with its <loc> added-token entries removed (keep=False) or flagged special."""
    tokenizer.save_pretrained(folder)
    state = json.loads((folder / "tokenizer.json").read_text())
    entries = [e for e in state["added_tokens"] if keep or not e["content"].startswith("<loc")]
    for entry in entries:
        if entry["content"].startswith("<loc"):
            entry["special"] = special
    state["added_tokens"] = entries
    (folder / "tokenizer.json").write_text(json.dumps(state))


@pytest.mark.parametrize("keep, special", [(False, False), (True, True)])
def test_location_tokens_are_whole_and_kept_whatever_the_file_says(tokenizer, tmp_path, keep, special):
    # Files may list <loc> only in the vocabulary (split by BPE) or as special (dropped on decode).
    _rewrite_loc_entries(tokenizer, tmp_path, keep, special)
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    loc = tokenizer.token_to_id("<loc0123>")
    assert raw.encode("<loc0123>").ids != [loc] or raw.decode([loc]) != "<loc0123>"
    loaded = PaliGemmaTokenizer.from_pretrained(tmp_path)
    assert loaded.encode("a cat<loc0123> sat") == tokenizer.encode("a cat<loc0123> sat")
    assert loaded.decode([loc, *tokenizer.encode(" cat")]) == "<loc0123> cat"
