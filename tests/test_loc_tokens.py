"""Tests for pgemma.loc_tokens: boxes to <loc> tokens and back, bad boxes."""

import numpy as np
import pytest

from pgemma.loc_tokens import boxes_to_loc_tokens, parse_loc_tokens


def test_boxes_round_trip():
    box = (10.0, 20.0, 40.0, 60.0)
    text = boxes_to_loc_tokens(box, 64)
    assert text == "<loc0160><loc0320><loc0640><loc0960>"
    [(parsed, label)] = parse_loc_tokens(text + " cat", 64)
    assert parsed == box and label == "cat"
    assert boxes_to_loc_tokens((0, 0, 64, 64), 64) == "<loc0000><loc0000><loc1023><loc1023>"
    # Rectangular image: y is a fraction of the height, x of the width.
    assert boxes_to_loc_tokens((50, 100, 100, 200), (100, 200)) == "<loc0512><loc0512><loc1023><loc1023>"


def test_round_trip_error_below_one_bin():
    rng = np.random.default_rng(0)
    for _ in range(200):
        y0, y1 = sorted(rng.uniform(0, 480, 2))
        x0, x1 = sorted(rng.uniform(0, 640, 2))
        [(box, _)] = parse_loc_tokens(boxes_to_loc_tokens((y0, x0, y1, x1), (480, 640)) + " a", (480, 640))
        assert np.all(np.abs(np.subtract(box, (y0, x0, y1, x1))) <= np.array([480, 640] * 2) / 1024)


def test_parse_several_detections_and_segments():
    text = (
        "<loc0000><loc0512><loc0256><loc1023> red cat ; "
        "<loc0100><loc0100><loc0200><loc0200><seg001><seg002> dog ; trailing words"
    )
    parsed = parse_loc_tokens(text)
    assert [label for _, label in parsed] == ["red cat", "dog"]
    assert parsed[0][0] == (0.0, 0.5, 0.25, 1023 / 1024)
    assert parse_loc_tokens("no boxes here") == []


def test_bad_boxes():
    with pytest.raises(ValueError, match="not a .* box inside"):
        boxes_to_loc_tokens((10, 10, 5, 20), 64)
    with pytest.raises(ValueError, match="got 3 numbers"):
        boxes_to_loc_tokens((1, 2, 3), 64)
