"""Tests for pgemma.processor: image steps, batches, prompt layout, padding, bad input, checkpoint folders, HF parity.

Image loading (pgemma.images) has its own tests in test_images.py.
"""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pgemma.config import IGNORE_INDEX, PaliGemmaConfig
from pgemma.processor import PaliGemmaProcessor, ProcessorBatch, load_processor

IMAGE_SIZE, NUM_IMAGE_TOKENS = 32, 16
PROMPTS = ["caption en", "answer en what color is the cat?", "detect cat ; dog"]
SUFFIXES = ["a red cat", "red", "<loc0010><loc0020><loc0500><loc0600> cat"]


@pytest.fixture(scope="module")
def tokenizer(make_tokenizer):
    return make_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return PaliGemmaProcessor(tokenizer, IMAGE_SIZE, NUM_IMAGE_TOKENS, max_length=200)


def random_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (31, 20, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L"),
    ]


def test_batch_shapes_and_dtypes(processor):
    batch = processor(random_images(), PROMPTS, SUFFIXES)
    assert isinstance(batch, ProcessorBatch)
    B, T = batch.input_ids.shape
    assert B == 3
    for name in ("attention_mask", "token_type_ids", "labels"):
        assert getattr(batch, name).shape == (B, T) and getattr(batch, name).dtype == torch.long
    assert batch.pixel_values.shape == (B, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.pixel_values.dtype == torch.float32
    assert batch.pixel_values.min() >= -1 and batch.pixel_values.max() <= 1


def test_prompt_layout(processor, tokenizer):
    ids, types, labels = processor.tokenize("caption en", "a red cat")
    prefix = [tokenizer.image_id] * NUM_IMAGE_TOKENS + [tokenizer.bos_id] + tokenizer.encode("caption en\n")
    answer = tokenizer.encode("a red cat") + [tokenizer.eos_id]
    assert ids == prefix + answer
    assert types == [0] * len(prefix) + [1] * len(answer)
    assert labels == [IGNORE_INDEX] * len(prefix) + answer
    assert processor.build_prompt("hi") == "<image>" * NUM_IMAGE_TOKENS + "<bos>hi\n"


def test_left_padding(processor, tokenizer):
    batch = processor(random_images()[:2], ["caption en", "answer en what color is the cat? say it"], ["a", "b"])
    lengths = batch.attention_mask.sum(1)
    assert lengths[0] < lengths[1] == batch.input_ids.shape[1]
    pad = batch.input_ids.shape[1] - lengths[0]
    assert batch.attention_mask[0, :pad].eq(0).all() and batch.attention_mask[0, pad:].eq(1).all()
    assert batch.input_ids[0, :pad].eq(tokenizer.pad_id).all()
    assert batch.input_ids[0, pad] == tokenizer.image_id
    assert batch.labels[0, :pad].eq(IGNORE_INDEX).all() and batch.token_type_ids[0, :pad].eq(0).all()
    # Every row ends with its answer's <eos> in the last column.
    assert batch.input_ids[:, -1].eq(tokenizer.eos_id).all()


def test_no_suffix_means_no_labels(processor):
    batch = processor(random_images()[0], "caption en")
    assert batch.labels is None
    assert batch.token_type_ids.eq(0).all()
    assert batch.input_ids.shape[0] == 1


def test_image_steps(processor):
    image = Image.fromarray(np.full((10, 20, 3), 255, dtype=np.uint8))
    resized = processor.resize(image)
    assert resized.size == (IMAGE_SIZE, IMAGE_SIZE)
    pixels = processor.rescale(resized)
    assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and np.allclose(pixels, 1.0)
    assert np.allclose(processor.normalize(pixels), 1.0)
    assert np.allclose(processor.normalize(np.zeros(3, np.float32)), -1.0)
    tensor = processor.preprocess_image(np.zeros((5, 5, 3), np.uint8))
    assert tensor.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and torch.allclose(tensor, torch.tensor(-1.0))


def test_one_image_or_a_list_of_images(processor):
    array = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)  # (H, W, C)
    tensor = torch.from_numpy(array).permute(2, 0, 1)  # (C, H, W): one image, not three
    one = processor(tensor, "caption en")
    assert one.pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(one.pixel_values[0], processor.preprocess_image(array))
    two = processor((array, tensor), ["caption en", "caption es"])
    assert torch.equal(two.pixel_values[0], two.pixel_values[1])


def test_what_is_not_an_image_is_named(processor):
    with pytest.raises(TypeError, match=r"images must be .*got a torch tensor of shape \(2, 3, 8, 8\)"):
        processor(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ["caption en", "caption es"])
    with pytest.raises(TypeError, match="images must be .*got bytes"):
        processor(b"\xff\xd8\xff", "caption en")
    with pytest.raises(TypeError, match="images must be .*got NoneType"):
        processor(None, "caption en")
    with pytest.raises(TypeError, match=r"images\[0\] must be .*got list"):
        processor([random_images()[:2]], ["caption en"])


def test_bad_batches(processor):
    images = random_images()
    with pytest.raises(ValueError, match="got 3 images for 2 prompts"):
        processor(images, PROMPTS[:2])
    with pytest.raises(ValueError, match="got 2 suffixes for 3 prompts"):
        processor(images, PROMPTS, SUFFIXES[:2])
    with pytest.raises(ValueError, match="contains <image>"):
        processor(images[0], "caption <image>")
    with pytest.raises(TypeError, match="prompt must be a str"):
        processor(images[0], [None])


def test_prompt_longer_than_context(processor):
    with pytest.raises(ValueError, match="longer than the model's context of 200"):
        processor(random_images()[0], "the quick brown fox " * 100)


def checkpoint_config(tokenizer, **changes) -> PaliGemmaConfig:
    """A model config for the tokenizer: 32 px images, 16 image tokens, a context of 300."""
    tiny = PaliGemmaConfig.tiny()
    text = dataclasses.replace(tiny.text_config, vocab_size=tokenizer.vocab_size, max_position_embeddings=300)
    return dataclasses.replace(tiny, text_config=text, **{"image_token_index": tokenizer.image_id, **changes})


def write_config(folder, config_json):
    (folder / "config.json").write_text(json.dumps(config_json))


def test_from_config(tokenizer):
    processor = PaliGemmaProcessor.from_config(checkpoint_config(tokenizer), tokenizer)
    assert (processor.image_size, processor.num_image_tokens, processor.max_length) == (32, 16, 300)


@pytest.mark.parametrize("image_size, image_tokens", [(224, 256), (448, 1024), (896, 4096)])
def test_the_processor_of_paligemma2_at_each_resolution(tokenizer, image_size, image_tokens):
    released = PaliGemmaConfig.paligemma2("3b", image_size)
    assert released.num_image_tokens == image_tokens
    # The released vision tower and image tokens, with this test tokenizer's ids and vocabulary.
    text = dataclasses.replace(released.text_config, vocab_size=tokenizer.vocab_size)
    ids = {"pad_token_id": tokenizer.pad_id, "eos_token_id": tokenizer.eos_id, "bos_token_id": tokenizer.bos_id}
    config = dataclasses.replace(released, text_config=text, image_token_index=tokenizer.image_id, **ids)
    batch = PaliGemmaProcessor.from_config(config, tokenizer)(random_images()[0], "caption en")
    assert batch.pixel_values.shape == (1, 3, image_size, image_size)
    assert (batch.input_ids == tokenizer.image_id).sum() == image_tokens


def test_from_config_refuses_a_tokenizer_of_another_model(tokenizer):
    with pytest.raises(ValueError, match="image_token_index is 5 but the tokenizer's <image> is 4; the tokenizer"):
        PaliGemmaProcessor.from_config(checkpoint_config(tokenizer, image_token_index=5), tokenizer)
    with pytest.raises(ValueError, match="eos_token_id is 2 but the tokenizer's <eos> is 1"):
        PaliGemmaProcessor.from_config(checkpoint_config(tokenizer, eos_token_id=2), tokenizer)
    with pytest.raises(ValueError, match="pad_token_id is 3 but the tokenizer's <pad> is 0"):
        PaliGemmaProcessor.from_config(checkpoint_config(tokenizer, pad_token_id=3), tokenizer)
    small = checkpoint_config(tokenizer)
    small = dataclasses.replace(small, text_config=dataclasses.replace(small.text_config, vocab_size=1000))
    with pytest.raises(ValueError, match=r"the tokenizer has 1234 ids but the model embeds only .*vocab_size=1000"):
        PaliGemmaProcessor.from_config(small, tokenizer)


def test_load_processor(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    write_config(tmp_path, checkpoint_config(tokenizer).to_hf_dict())
    processor = load_processor(tmp_path)
    assert (processor.image_size, processor.num_image_tokens, processor.max_length) == (32, 16, 300)
    assert processor.tokenizer.encode("a red cat") == tokenizer.encode("a red cat")


def test_load_processor_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_processor(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_processor(tmp_path)
    config_json = checkpoint_config(tokenizer).to_hf_dict()
    write_config(tmp_path, config_json)
    with pytest.raises(ValueError, match="expected tokenizer.json or tokenizer.model"):
        load_processor(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    write_config(tmp_path, {**config_json, "image_token_index": 5})
    with pytest.raises(ValueError, match="config.json: image_token_index is 5 but the tokenizer's <image> is 4"):
        load_processor(tmp_path)
    write_config(tmp_path, {**config_json, "text_config": {**config_json["text_config"], "num_image_tokens": 9}})
    with pytest.raises(ValueError, match=r"config.json: text_config.num_image_tokens 9 != \(image_size 32 // "):
        load_processor(tmp_path)
    write_config(tmp_path, {**config_json, "model_type": "llava"})
    with pytest.raises(ValueError, match="config.json: model_type must be 'paligemma'"):
        load_processor(tmp_path)


def test_matches_transformers_processor(processor, tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    tokenizer.save_pretrained(tmp_path)
    image_processor = transformers.SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_seq_length=NUM_IMAGE_TOKENS,
        resample=Image.Resampling.BICUBIC,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_convert_rgb=True,
    )
    hf = transformers.PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=transformers.AutoTokenizer.from_pretrained(tmp_path)
    )
    images = random_images()
    for suffixes in (SUFFIXES, None):
        ours = processor(images, PROMPTS, suffixes)
        theirs = hf(images=images, text=PROMPTS, suffix=suffixes, return_tensors="pt", padding="longest")
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(getattr(ours, name), theirs[name]), name
        torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], atol=1e-6, rtol=0)
        if suffixes is not None:
            assert torch.equal(ours.labels, theirs["labels"])
