"""Boxes as PaliGemma's ``<locNNNN>`` tokens, and back. Book chapter: "The PaliGemma processor".

A detection answer writes each box as four location tokens, y_min, x_min, y_max, x_max, each a
coordinate cut into 1024 bins of the image side, then the label; detections are joined by " ; ":

    <loc0320><loc0512><loc0704><loc0896> square ; <loc0000><loc0100><loc0300><loc0400> circle

`boxes_to_loc_tokens` writes a box (the world's answers use it), `parse_loc_tokens` reads an answer
back (evaluation and figures use it). Plain text in, plain text out: this module needs neither the
tokenizer nor the processor, so both, and the world, can use it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NUM_LOC_TOKENS = 1024  # <loc0000> .. <loc1023>: bins per image side

_LOC_BOX = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>((?:<seg\d{3}>)*)\s*([^;<]*)")


def _height_width(image_size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return height, width


def boxes_to_loc_tokens(box_yxyx: Sequence[float], image_size: int | tuple[int, int]) -> str:
    """A pixel box (y_min, x_min, y_max, x_max) as PaliGemma's four <locNNNN> tokens.

    Each coordinate is divided by the image side (height for y, width for x) and cut into 1024
    equal bins: bin k holds [k / 1024, (k + 1) / 1024) of the side; the far edge goes to 1023.

    Args:
        box_yxyx: (y_min, x_min, y_max, x_max) in pixels of the image the box was drawn on.
        image_size: that image's side, or (height, width).
    Note: big_vision's segmentation evaluator reads tokens back as k / 1023 rather than
    Google's parser's k / 1024; the two differ by less than one bin.
    """
    height, width = _height_width(image_size)
    if len(box_yxyx) != 4:
        raise ValueError(f"a box is (y_min, x_min, y_max, x_max), got {len(box_yxyx)} numbers")
    y_min, x_min, y_max, x_max = box_yxyx
    if not (0 <= y_min <= y_max <= height and 0 <= x_min <= x_max <= width):
        raise ValueError(
            f"box {tuple(box_yxyx)} is not a (y_min, x_min, y_max, x_max) box inside a {height}x{width} image"
        )
    sides = (height, width, height, width)
    bins = [min(NUM_LOC_TOKENS - 1, int(v / side * NUM_LOC_TOKENS)) for v, side in zip(box_yxyx, sides)]
    return "".join(f"<loc{b:04d}>" for b in bins)


def parse_loc_tokens(
    text: str, image_size: int | tuple[int, int] | None = None
) -> list[tuple[tuple[float, float, float, float], str]]:
    """Read a detection answer "<loc..>x4 label ; <loc..>x4 label" back into boxes and labels.

    Args:
        text: decoded model output; text that is not a box is skipped (as Google's parser does).
        image_size: side or (height, width) to scale to pixels; None gives fractions of the side.
    Returns:
        [((y_min, x_min, y_max, x_max), label), ...]; the box is bin k -> k / 1024 of the side.
    """
    height, width = (1, 1) if image_size is None else _height_width(image_size)
    sides = (height, width, height, width)
    return [
        (tuple(int(k) / NUM_LOC_TOKENS * side for k, side in zip(match.groups()[:4], sides)), match.group(6).strip())
        for match in _LOC_BOX.finditer(text)
    ]
