"""Images as users have them, made into one upright RGB picture. Book chapter: "The PaliGemma processor".

The processor's first step, `load_image`, accepts one `ImageInput`:

    str | Path        a file PIL can open (JPEG, PNG, WebP, GIF's first frame, TIFF, PGM, ...)
    PIL.Image.Image   any mode but the 32-bit ones, I and F (step 2)
    np.ndarray        uint8 or uint16, channels LAST: [H, W], [H, W, 1], [H, W, 3] RGB, [H, W, 4] RGBA,
                      as `np.asarray(pil_image)` and matplotlib give them
    torch.Tensor      uint8 or uint16, channels FIRST: [H, W], [1, H, W], [3, H, W], [4, H, W],
                      as `torchvision.io.decode_image` gives them

A batch (`image_batch`) is a list or tuple of these, one image per prompt. An array or a tensor is
always ONE image, whatever its shape: a 4-D one is refused rather than split into a batch
(`list(batch)` splits it). Anything else (bytes, a dict, None, a list inside the batch, ...) is a
TypeError that names what was passed.

Every image then takes three steps to 8-bit RGB:

1. Upright. Cameras store pixels as the sensor read them and record in the EXIF Orientation tag
   (1-8) how to turn them for display. Files and PIL images are turned by
   `PIL.ImageOps.exif_transpose`, as `transformers.image_utils.load_image` does for both.
2. 8 bits per channel. 16-bit grey (modes I;16, I;16B, I;16L, I;16N, and mode I when a PNG or
   PGM file holds it) keeps each value's high byte, v >> 8, as PIL does itself when it opens a
   16-bit RGB PNG; uint16 arrays and tensors likewise. 32-bit pixels (modes I and F) have no fixed
   range and are refused.
3. RGB. Transparent pixels (modes RGBA, LA, PA, and any mode with a "transparency" entry, as a
   palette or a PNG tRNS chunk gives) are composited onto white, as transformers'
   `convert_to_rgb` does; the other modes go through PIL's `convert("RGB")`.

For RGB, RGBA and grey images, files, arrays and tensors, the pixels equal transformers'. Note
where transformers differs (`tests/test_images.py` checks our side of each):

- its processor turns files upright but passes PIL images through as stored (only its
  `load_image` turns them);
- its `convert_to_rgb` clips 16-bit grey to 0..255 with PIL's `convert`, so every value from 256
  up becomes white: 99.6% of the pixels of a ramp from 0 to 65535;
- it fails on mode La, keeps the colour under transparent pixels of RGBa, and composites LAB as
  if its a* band were alpha (see `_to_rgb`);
- it guesses from an array's shape whether its channels come first or last.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor

# Checked from the file header before any pixel is decoded, so a small file that claims to be
# a huge image (a "decompression bomb") is refused without filling memory. 8192 x 8192.
MAX_IMAGE_PIXELS = 8192 * 8192

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Formats whose mode I pixels are 16-bit: PNG before Pillow 10.3, PGM with a maximum above 255.
SIXTEEN_BIT_FORMATS = ("PNG", "PPM")
ALPHA_MODES = ("RGBA", "LA", "PA")
PREMULTIPLIED_MODES = {"RGBa": "RGBA", "La": "LA"}  # colour already multiplied by alpha
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", *ALPHA_MODES, *PREMULTIPLIED_MODES)


def image_batch(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """The batch rule: a list or tuple holds one image per prompt; anything else is one image.

    Raises TypeError for what is not an image (see the module docstring), before any file is read.
    """
    if isinstance(images, (list, tuple)):
        for index, image in enumerate(images):
            _check_image(image, f"images[{index}]")
        return list(images)
    _check_image(images, "images")
    return [images]


def load_image(image: ImageInput, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and validate one image; returns it upright, as an 8-bit RGB PIL image.

    Args:
        image: a file path (str or Path), a PIL image, a uint8 or uint16 numpy array [H, W] or
            [H, W, C] (channels last) or torch tensor [H, W] or [C, H, W] (channels first), C in 1, 3, 4.
        max_pixels: larger images are refused, files before their pixels are decoded.
    Raises:
        TypeError: not one image of these types, dtypes and numbers of axes.
        ValueError: a missing, corrupt or too large file, another number of channels, or a PIL
            mode without a known 8-bit meaning (I, F).
    """
    _check_image(image, "image")
    if isinstance(image, (str, Path)):
        return _open_image_file(Path(image), max_pixels)
    if isinstance(image, torch.Tensor):
        image = _tensor_to_array(image)  # (H, W, C)
    if isinstance(image, np.ndarray):
        image = _array_to_image(image)
    _check_pixels(image.size, "image", max_pixels)
    return _to_rgb(image, "image")


def _check_image(image: object, name: str) -> None:
    """TypeError unless `image` is one image: a path, a PIL image, or a uint8/uint16 array or tensor of 2 or 3 axes."""
    if isinstance(image, (str, Path, Image.Image)):
        return
    if isinstance(image, (np.ndarray, torch.Tensor)):
        layout = "[H, W] or [H, W, C]" if isinstance(image, np.ndarray) else "[H, W] or [C, H, W]"
        if image.ndim not in (2, 3):
            raise TypeError(
                f"{name} must be one image, {layout}, got {_describe(image)}; "
                "pass a batch as a list of images, e.g. list(batch)"
            )
        dtype = image.dtype.type if isinstance(image, np.ndarray) else image.dtype  # .type: big-endian too
        if dtype not in (np.uint8, np.uint16, torch.uint8, torch.uint16):
            raise TypeError(
                f"{name} must hold uint8 pixels (0..255) or uint16 ones (0..65535), got {_describe(image)}; "
                "float pixels may mean 0..1 or 0..255: convert them first, e.g. (x * 255).round() to uint8"
            )
        if 0 in image.shape:
            raise ValueError(f"{name} is empty: {_describe(image)}")
        return
    hint = ""
    if isinstance(image, (bytes, bytearray, memoryview)):
        hint = "; open encoded bytes with PIL.Image.open(io.BytesIO(data)) first"
    elif isinstance(image, (list, tuple)):
        hint = "; a batch is one flat list with one image per prompt"
    accepted = "a file path (str or Path), a PIL.Image, a numpy array or a torch tensor"
    raise TypeError(f"{name} must be {accepted}, got {_describe(image)}{hint}")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, torch.Tensor):
        return f"a torch tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def _open_image_file(path: Path, max_pixels: int) -> Image.Image:
    what = f"image file {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{what} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} is empty")
    try:
        with warnings.catch_warnings():  # PIL warns past its own, higher, limit; we refuse below it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)  # reads only the header
        with opened:
            _check_pixels(opened.size, what, max_pixels)
            opened.load()
            return _to_rgb(opened, what)  # while open: the file's format tells what mode I means
    except UnidentifiedImageError:
        raise ValueError(f"{str(path)!r} is not an image file PIL can read") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{what} is too large (more than {max_pixels} pixels)") from None
    except (OSError, SyntaxError) as error:  # truncated or corrupt pixel data
        raise ValueError(f"{what} could not be decoded: {error}") from None


def _tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    """A checked [H, W] or [C, H, W] tensor (channels first) -> an array [H, W] or [H, W, C]."""
    if tensor.ndim == 3 and tensor.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"image tensors must be [H, W] or [C, H, W] with C = 1, 3 or 4 (channels first), got shape "
            f"{tuple(tensor.shape)}; a channels-last tensor becomes one with tensor.permute(2, 0, 1)"
        )
    array = tensor.detach().cpu().numpy()
    return array if array.ndim == 2 else array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)


def _array_to_image(array: np.ndarray) -> Image.Image:
    """A checked uint8 or uint16 array [H, W] or [H, W, C] (channels last) -> an 8-bit PIL image."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        raise ValueError(
            f"image arrays must be [H, W], [H, W, 3] or [H, W, 4] (channels last), got shape {array.shape}"
        )
    if array.dtype.type is np.uint16:  # big-endian ones too
        array = array >> 8  # the high byte, as for 16-bit image files
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))


def _check_pixels(size: tuple[int, int], what: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ValueError(f"{what} is too large: {width}x{height} pixels, the limit is {max_pixels}")


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    """Any PIL image -> upright 8-bit RGB (steps 1-3 of the module docstring)."""
    sixteen_bit = image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format in SIXTEEN_BIT_FORMATS)
    # A copy, turned as its Orientation tag says, as transformers.image_utils.load_image does for
    # paths and PIL images alike (transformers' processor turns paths only).
    image = ImageOps.exif_transpose(image)
    if sixteen_bit:
        image = _high_byte(image)
    elif image.mode in PREMULTIPLIED_MODES:
        image = image.convert(PREMULTIPLIED_MODES[image.mode])
    elif image.mode not in EIGHT_BIT_MODES:
        raise ValueError(
            f"{what} has mode {image.mode!r}: its pixels have no fixed range to map onto 0..255 "
            "(32-bit integers I, floats F); convert it to mode L or RGB yourself"
        )
    # transformers' convert_to_rgb composites when "A" is a band name, LAB's a* too. PIL's LAB ->
    # RGBA then reads a byte LAB does not use: 255 in LAB files, but a LAB image made from RGBA
    # keeps its old alpha there. LAB has no alpha, so it is converted straight to RGB.
    if image.mode in ALPHA_MODES or image.info.get("transparency") is not None:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _high_byte(image: Image.Image) -> Image.Image:
    """16-bit grey -> 8-bit grey, v >> 8: mode L, or LA when one value is marked transparent."""
    values = np.asarray(image).astype(np.uint16)  # (H, W); from big-endian I;16B and int32 I too
    grey = Image.fromarray((values >> 8).astype(np.uint8))
    transparent = image.info.get("transparency")
    if transparent is None:
        return grey
    alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
    return Image.merge("LA", (grey, alpha))
