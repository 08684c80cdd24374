"""Tests for pgemma.images: what load_image accepts and refuses, EXIF orientation, every PIL mode, 16-bit
pixels, transparency, arrays and tensors, bad files, and parity with transformers' image loading."""

import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pgemma.images import image_batch, load_image
from pgemma.processor import PaliGemmaProcessor

RNG = np.random.default_rng(0)
UPRIGHT = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # (H, W, C), no symmetry to hide a wrong turn
# Flat 8 x 8 blocks: JPEG (without chroma subsampling) decodes each block alike wherever it lies,
# so a stored JPEG turned upright equals the upright JPEG exactly.
UPRIGHT_BLOCKS = np.kron(RNG.integers(0, 256, (2, 3, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # (16, 24, 3)
RAMP_16 = np.linspace(0, 65535, 6 * 9).reshape(6, 9).astype(np.uint16)  # 16-bit grey, mostly above 255
# How a camera stores the upright picture for each EXIF Orientation value (the tag says how to undo it).
STORED = {
    1: lambda upright: upright,
    2: np.fliplr,
    3: lambda upright: np.rot90(upright, 2),
    4: np.flipud,
    5: lambda upright: upright.swapaxes(0, 1),
    6: lambda upright: np.rot90(upright, 1),
    7: lambda upright: np.rot90(upright, 2).swapaxes(0, 1),
    8: lambda upright: np.rot90(upright, -1),
}


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[0x0112] = orientation  # Orientation
    return tags


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_16_bit(values: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 values [H, W] (grey) or [H, W, 3] (RGB), which PIL cannot write itself."""
    height, width = values.shape[:2]
    color_type = 0 if values.ndim == 2 else 2
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG file of a few dozen bytes whose header claims width x height pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def pixels(image) -> np.ndarray:
    return np.asarray(load_image(image))  # (H, W, C)


# ---- EXIF orientation ---------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", STORED)
@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_exif_orientation_is_undone(tmp_path, orientation, suffix):
    upright = UPRIGHT if suffix == "png" else UPRIGHT_BLOCKS
    save = {"png": {}, "jpg": {"quality": 90, "subsampling": 0}}[suffix]
    Image.fromarray(upright).save(tmp_path / f"upright.{suffix}", **save)
    stored = np.ascontiguousarray(STORED[orientation](upright))
    Image.fromarray(stored).save(tmp_path / f"stored.{suffix}", exif=exif(orientation), **save)
    expected = pixels(tmp_path / f"upright.{suffix}")
    if suffix == "png":
        assert np.array_equal(expected, upright)
    assert np.array_equal(pixels(tmp_path / f"stored.{suffix}"), expected)  # a file path
    with Image.open(tmp_path / f"stored.{suffix}") as opened:  # a PIL image, as opened
        assert np.array_equal(pixels(opened), expected)


def test_exif_orientation_keeps_transparency(tmp_path):
    upright = Image.fromarray(RNG.integers(0, 256, (12, 20, 4), dtype=np.uint8), "RGBA")
    Image.fromarray(STORED[6](np.asarray(upright)).copy(), "RGBA").save(tmp_path / "a.png", exif=exif(6))
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(upright))


def test_matches_transformers_image_processor(tmp_path):
    """Oriented files: equal to transformers' processor, which turns files upright. Oriented PIL
    images: equal to transformers.image_utils.load_image (its processor passes them through as
    stored). Arrays (channels last) and tensors (channels first): equal to its processor."""
    transformers = pytest.importorskip("transformers")
    from transformers.image_utils import load_image as hf_load_image

    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf = transformers.SiglipImageProcessor(
        size={"height": 16, "width": 16},
        resample=Image.Resampling.BICUBIC,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_convert_rgb=True,
    )

    def check(ours, theirs):
        ours = np.asarray(load_image(ours).resize((16, 16), Image.Resampling.BICUBIC), np.float32)  # (I, I, C)
        ours = torch.from_numpy((ours * np.float32(1 / 255) - 0.5) / 0.5).permute(2, 0, 1)  # (C, I, I)
        torch.testing.assert_close(ours, hf(theirs, return_tensors="pt")["pixel_values"][0], atol=1e-6, rtol=0)

    for orientation, stored in STORED.items():
        path = tmp_path / f"o{orientation}.png"
        Image.fromarray(np.ascontiguousarray(stored(UPRIGHT))).save(path, exif=exif(orientation))
        check(path, str(path))
        with Image.open(path) as opened:
            assert np.array_equal(pixels(opened), np.asarray(hf_load_image(opened)))
    rgba = np.concatenate([UPRIGHT, RNG.integers(0, 256, (12, 20, 1), dtype=np.uint8)], axis=-1)  # (H, W, 4)
    for array in (UPRIGHT, rgba):
        check(array, array)
        tensor = torch.from_numpy(array).permute(2, 0, 1)  # (C, H, W)
        check(tensor, tensor)


# ---- PIL modes ----------------------------------------------------------------------------------


def image_in_mode(mode: str) -> Image.Image:
    """A small image of `mode`: 16-bit modes hold RAMP_16, I and F their own ranges, the rest UPRIGHT."""
    if mode.startswith("I;16"):
        dtype = {"I;16B": ">u2", "I;16N": "=u2"}.get(mode, "<u2")
        return Image.frombytes(mode, RAMP_16.shape[::-1], RAMP_16.astype(dtype).tobytes())
    if mode == "I":
        return Image.fromarray(RAMP_16.astype(np.int32) - 1000)
    if mode == "F":
        return Image.fromarray(RAMP_16.astype(np.float32) / 65535)
    return Image.fromarray(UPRIGHT).convert(mode)


@pytest.mark.parametrize("mode", sorted(Image.MODES))
def test_every_pil_mode_is_converted_or_refused_by_name(mode):
    image = image_in_mode(mode)
    if mode in ("I", "F"):  # 32-bit pixels of no fixed range
        with pytest.raises(ValueError, match=f"has mode '{mode}': its pixels have no fixed range"):
            load_image(image)
    else:
        converted = load_image(image)
        assert converted.mode == "RGB" and converted.size == image.size


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "LA", "PA"])
def test_eight_bit_modes_match_transformers_convert_to_rgb(mode):
    pytest.importorskip("transformers")
    from transformers.image_transforms import convert_to_rgb

    channels = 4 if mode in ("RGBA", "LA", "PA") else 3
    image = Image.fromarray(RNG.integers(0, 256, (12, 20, channels), dtype=np.uint8)).convert(mode)
    assert np.array_equal(pixels(image), convert_to_rgb(image, return_numpy=True))


def test_lab_has_no_alpha():
    """PIL keeps a 3-band pixel in 4 bytes; a LAB image made from RGBA keeps the old alpha in the
    fourth, and LAB -> RGBA reads it. transformers composites LAB (its bands are L, A, B) and so
    whitens such an image; we convert LAB straight to RGB."""
    rgba = Image.fromarray(np.concatenate([UPRIGHT, np.zeros((12, 20, 1), np.uint8)], axis=-1), "RGBA")
    lab = rgba.convert("LAB")
    assert (np.asarray(lab.convert("RGBA"))[..., 3] == 0).all()  # the stale alpha
    assert np.array_equal(pixels(lab), np.asarray(lab.convert("RGB")))
    assert not (pixels(lab) == 255).all()


def transparent_images() -> dict[str, Image.Image]:
    """Every way PIL marks pixels transparent, each with fully transparent, half and opaque pixels."""
    alpha = RNG.choice(np.array([0, 128, 255], np.uint8), size=(12, 20, 1))
    rgba = Image.fromarray(np.concatenate([UPRIGHT, alpha], axis=-1), "RGBA")
    palette = rgba.convert("RGB").quantize(8)
    palette.info["transparency"] = 3  # one palette entry transparent (GIF, PNG)
    grey, rgb = rgba.convert("L"), rgba.convert("RGB")
    grey.info["transparency"] = int(np.asarray(grey)[0, 0])  # PNG tRNS: one grey value transparent
    rgb.info["transparency"] = tuple(int(value) for value in UPRIGHT[0, 0])  # PNG tRNS: one colour transparent
    return {
        "RGBA": rgba,
        "LA": rgba.convert("LA"),
        "PA": rgba.convert("PA"),
        "P with transparency": palette,
        "L with transparency": grey,
        "RGB with transparency": rgb,
    }


@pytest.mark.parametrize("name", list(transparent_images()))
def test_transparency_is_composited_onto_white_like_transformers(name):
    pytest.importorskip("transformers")
    from transformers.image_transforms import convert_to_rgb

    image = transparent_images()[name]
    ours = pixels(image)
    assert np.array_equal(ours, convert_to_rgb(image, return_numpy=True))
    transparent = np.asarray(image.convert("RGBA"))[..., 3] == 0  # (H, W)
    assert transparent.any() and (ours[transparent] == 255).all()


def test_transparent_pixels_become_white():
    assert load_image(Image.new("RGBA", (4, 4), (10, 20, 30, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("LA", (4, 4), (10, 0))).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("premultiplied, plain", [("RGBa", "RGBA"), ("La", "LA")])
def test_premultiplied_alpha_is_composited_like_plain_alpha(premultiplied, plain):
    """Alpha 0 or 255 only, so that premultiplying loses nothing. transformers fails on La and
    keeps the colour under transparent RGBa pixels, here black."""
    alpha = RNG.choice(np.array([0, 255], np.uint8), size=(12, 20, 1))
    image = Image.fromarray(np.concatenate([UPRIGHT, alpha], axis=-1), "RGBA").convert(plain)
    assert np.array_equal(pixels(image.convert(premultiplied)), pixels(image))


# ---- 16-bit pixels ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N"])
def test_sixteen_bit_grey_keeps_the_high_byte(mode):
    """PIL's convert (so transformers' convert_to_rgb) clips instead: all but the darkest values turn white."""
    expected = np.repeat((RAMP_16 >> 8)[..., None], 3, axis=-1)  # (H, W, C)
    assert np.array_equal(pixels(image_in_mode(mode)), expected)


def test_sixteen_bit_files(tmp_path):
    expected = np.repeat((RAMP_16 >> 8)[..., None], 3, axis=-1)
    Image.fromarray(RAMP_16).save(tmp_path / "grey.png")  # opens as I;16
    Image.fromarray(RAMP_16).save(tmp_path / "grey.pgm")  # opens as I (32-bit) holding 16-bit values
    with Image.open(tmp_path / "grey.pgm") as opened:
        assert opened.mode == "I"
        assert np.array_equal(pixels(opened), expected)
    for name in ("grey.png", "grey.pgm"):
        assert np.array_equal(pixels(tmp_path / name), expected)
    # The high byte is PIL's own rule for 16-bit RGB PNGs: grey and RGB files of one ramp agree.
    (tmp_path / "rgb.png").write_bytes(png_16_bit(np.repeat(RAMP_16[..., None], 3, axis=-1)))
    (tmp_path / "grey_handmade.png").write_bytes(png_16_bit(RAMP_16))
    assert np.array_equal(pixels(tmp_path / "rgb.png"), expected)
    assert np.array_equal(pixels(tmp_path / "grey_handmade.png"), expected)


def test_sixteen_bit_grey_with_a_transparent_value():
    image = Image.fromarray(RAMP_16)
    image.info["transparency"] = int(RAMP_16[2, 3])  # as PNG's tRNS chunk marks one grey value
    expected = np.repeat((RAMP_16 >> 8)[..., None], 3, axis=-1)
    expected[2, 3] = 255
    assert np.array_equal(pixels(image), expected)


def test_thirty_two_bit_modes_are_refused_unless_a_file_says_16_bit(tmp_path):
    with pytest.raises(ValueError, match="has mode 'I'"):
        load_image(Image.fromarray(RAMP_16.astype(np.int32)))  # in 0..65535, but nothing says 16-bit
    Image.fromarray(RAMP_16.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"image file '.*float.tif' has mode 'F'"):
        load_image(tmp_path / "float.tif")


# ---- Arrays and tensors -------------------------------------------------------------------------


def test_inputs_of_every_kind_agree(tmp_path):
    array = RNG.integers(0, 256, (24, 36, 3), dtype=np.uint8)  # (H, W, C)
    Image.fromarray(array).save(tmp_path / "a.png")
    expected = pixels(array)
    assert np.array_equal(expected, array)
    for image in (
        Image.fromarray(array),
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        torch.from_numpy(array).permute(2, 0, 1),  # (C, H, W)
        array.astype(np.uint16) * 257,  # 16-bit, the same picture
        torch.from_numpy(array.astype(np.int32) * 257).to(torch.uint16).permute(2, 0, 1),
        (array.astype(np.uint16) * 257).astype(">u2"),  # big-endian
    ):
        assert np.array_equal(pixels(image), expected)


def test_grey_and_alpha_arrays_and_tensors():
    grey = RNG.integers(0, 256, (5, 7), dtype=np.uint8)  # (H, W)
    expected = np.repeat(grey[..., None], 3, axis=-1)
    for image in (grey, grey[..., None], torch.from_numpy(grey), torch.from_numpy(grey)[None]):
        assert np.array_equal(pixels(image), expected)
    rgba = np.concatenate([UPRIGHT, RNG.integers(0, 256, (12, 20, 1), dtype=np.uint8)], axis=-1)  # (H, W, 4)
    assert np.array_equal(pixels(rgba), pixels(Image.fromarray(rgba, "RGBA")))
    assert np.array_equal(pixels(torch.from_numpy(rgba).permute(2, 0, 1)), pixels(rgba))


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 4, 3), np.float32), r"numpy array of shape \(4, 4, 3\) and dtype float32"),
        (np.zeros((4, 4, 3), np.float64) + 0.5, r"numpy array of shape \(4, 4, 3\) and dtype float64"),
        (np.zeros((4, 4), np.int64), r"numpy array of shape \(4, 4\) and dtype int64"),
        (np.zeros((4, 4), bool), r"dtype bool"),
        (torch.zeros(3, 4, 4), r"torch tensor of shape \(3, 4, 4\) and dtype torch.float32"),
        (torch.zeros(3, 4, 4, dtype=torch.int64), r"dtype torch.int64"),
    ],
)
def test_other_dtypes_are_refused_naming_dtype_and_shape(image, message):
    with pytest.raises(TypeError, match=r"must hold uint8 pixels .*" + message):
        load_image(image)


def test_bad_layouts():
    with pytest.raises(ValueError, match=r"channels last\), got shape \(3, 4, 5\)"):
        load_image(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"channels first\), got shape \(8, 8, 3\).*permute\(2, 0, 1\)"):
        load_image(torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"image is empty: a numpy array of shape \(0, 4, 3\)"):
        load_image(np.zeros((0, 4, 3), np.uint8))


# ---- What is not an image -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, message",
    [
        (b"\x89PNG", r"got bytes; open encoded bytes with PIL.Image.open\(io.BytesIO\(data\)\)"),
        (bytearray(b"\xff\xd8"), "got bytearray"),
        ({"image": "cat.jpg"}, "got dict"),
        (3, "got int"),
        (None, "got NoneType"),
        ([np.zeros((4, 4, 3), np.uint8)], "got list"),
        (
            np.zeros((2, 4, 4, 3), np.uint8),
            r"one image, \[H, W\] or \[H, W, C\], got a numpy array of shape \(2, 4, 4, 3\)",
        ),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), r"\[C, H, W\], got a torch tensor of shape \(2, 3, 4, 4\)"),
        (np.zeros(4, np.uint8), r"got a numpy array of shape \(4,\)"),
    ],
)
def test_what_is_not_one_image_is_a_type_error(image, message):
    with pytest.raises(TypeError, match=r"^image must be .*" + message):
        load_image(image)


def test_image_batch_rule():
    array, tensor = np.zeros((4, 4, 3), np.uint8), torch.zeros(3, 4, 4, dtype=torch.uint8)
    assert len(image_batch(array)) == 1 and len(image_batch(tensor)) == 1  # one image, not 4 or 3 rows
    assert len(image_batch("cat.jpg")) == 1
    assert len(image_batch([array, tensor, "cat.jpg"])) == 3 and len(image_batch((array, array))) == 2
    with pytest.raises(TypeError, match=r"images\[1\] must be .*got list; a batch is one flat list"):
        image_batch([array, [array, array]])
    with pytest.raises(TypeError, match=r"images must be .*got a torch tensor of shape \(2, 3, 4, 4\).*list\(batch\)"):
        image_batch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="images must be .*got bytes"):
        image_batch(b"\xff\xd8")


# ---- Bad files ----------------------------------------------------------------------------------


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(ValueError, match="not an image file"):
        load_image(tmp_path / "text.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    with pytest.raises(ValueError, match="could not be decoded"):
        load_image(tmp_path / "cut.png")


def test_too_large_image_refused_before_decoding(tmp_path):
    Image.new("RGB", (11, 10)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="too large: 11x10 pixels, the limit is 100"):
        load_image(tmp_path / "big.png", max_pixels=100)
    with pytest.raises(ValueError, match="too large"):
        load_image(np.zeros((20, 20, 3), np.uint8), max_pixels=100)
    with pytest.raises(ValueError, match="too large"):
        load_image(torch.zeros(3, 20, 20, dtype=torch.uint8), max_pixels=100)


@pytest.mark.parametrize("side", [9000, 20_000])  # past our limit; past PIL's own bomb limit too
def test_decompression_bomb_refused(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(png_claiming(side, side))
    with pytest.raises(ValueError, match="too large"):
        load_image(tmp_path / "bomb.png")


def test_processor_load_image_uses_its_pixel_limit(make_tokenizer, tmp_path):
    processor = PaliGemmaProcessor(make_tokenizer(), 32, 16, max_image_pixels=100)
    Image.new("RGB", (11, 10)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="the limit is 100"):
        processor.load_image(tmp_path / "big.png")
