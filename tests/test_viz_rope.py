"""The RoPE figures of chapter "RoPE" rotate by the package's angles."""

import math

import matplotlib
import pytest

matplotlib.use("Agg")

from pgemma.viz.rope import plot_rope_frequencies, plot_rope_rotation, rotate_pair  # noqa: E402


def test_rotate_pair_turns_by_position_times_frequency():
    head_dim, pair, position = 16, 1, 5
    angle = position * 10_000.0 ** (-2 * pair / head_dim)
    u, v = rotate_pair((1.0, 0.0), position, pair, head_dim)
    assert math.isclose(u, math.cos(angle), abs_tol=1e-6) and math.isclose(v, math.sin(angle), abs_tol=1e-6)
    assert rotate_pair((0.3, -0.4), 0, 3, head_dim) == pytest.approx((0.3, -0.4))
    with pytest.raises(ValueError, match="pair must be in"):
        rotate_pair((1.0, 0.0), 1, 8, head_dim)


def test_plots_show_the_numbers_they_claim():
    frequencies = plot_rope_frequencies(256)
    assert "6.3 to" in frequencies.axes[0].get_title()
    rotation = plot_rope_rotation(position=3, pair=0, head_dim=16)
    assert "angle 3.00 rad" in rotation.axes[0].get_title()
    assert len(rotation.axes[0].collections[0].get_offsets()) == 4  # tips at positions 0..3
