"""The terminal line chart behind `schedctl metrics RUN --chart NAME`: a pure function, checked exactly."""

from __future__ import annotations

import math

import pytest

from gridlab.client.chart import line_chart


def test_a_falling_curve_is_drawn_top_left_to_bottom_right() -> None:
    text = line_chart([(0, 1.0), (1, 0.5), (2, 0.25)], width=8, height=3, title="loss")
    assert text.splitlines() == [
        "loss",
        "   1 |**",
        "     |  ***",
        "0.25 |     ***",
        "     +--------",
        "      0      2",
    ]


def test_big_jumps_are_joined_and_the_middle_is_labelled() -> None:
    lines = line_chart([(0, 0), (1, 10), (2, 0)], width=9, height=6).splitlines()
    assert lines[0] == "10 |    *"
    assert lines[2].startswith(" 6 |")  # the middle row's value
    assert lines[3] == "   |  :    :"  # a jump of more than one row is joined
    assert lines[5] == " 0 |*       *"


def test_every_line_has_the_plot_width_at_most_and_no_trailing_spaces() -> None:
    points = [(float(i), math.sin(i / 5)) for i in range(200)]
    lines = line_chart(points, width=50, height=10, title="sin").splitlines()
    assert len(lines) == 1 + 10 + 2
    assert all(line == line.rstrip() for line in lines)
    plot = [line.split("|", 1)[1] for line in lines[1:11]]
    assert all(len(row) <= 50 for row in plot)
    assert sum(row.count("*") for row in plot) == 50  # one point per column


def test_unsorted_and_non_finite_points() -> None:
    shuffled = line_chart([(2, 0.25), (0, 1.0), (1, 0.5), (3, math.nan), (4, math.inf)], width=8, height=3)
    assert shuffled == line_chart([(0, 1.0), (1, 0.5), (2, 0.25)], width=8, height=3)


def test_flat_single_and_empty_series() -> None:
    flat = line_chart([(0, 1), (10, 1)], width=8, height=3).splitlines()
    assert flat[1] == "1 |********"
    single = line_chart([(5, 2.5)], width=8, height=3).splitlines()
    assert single[1] == "2.5 |*"
    assert single[-1].strip() == "5"
    assert line_chart([], width=8, height=3, title="acc") == "acc\n(no data)"
    assert line_chart([(0, math.nan)], width=8, height=3) == "(no data)"


@pytest.mark.parametrize(("width", "height"), [(7, 5), (20, 1)])
def test_too_small_is_a_value_error(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="width >= 8 and height >= 2"):
        line_chart([(0, 1)], width=width, height=height)


def _plot_rows(text: str) -> list[str]:
    return [line.split("|", 1)[1] for line in text.splitlines() if "|" in line]


def test_huge_values_do_not_overflow_the_span() -> None:
    # 1e308 - -1e308 is inf in floats: the chart must still draw, for y and for x alike.
    text = line_chart([(0, 1e308), (1, -1e308), (2, 1e308)], width=9, height=5)
    rows = _plot_rows(text)
    assert rows[0] == "*       *"
    assert rows[-1] == "    *"
    assert text.splitlines()[0].lstrip().startswith("1e+308 |")
    across = line_chart([(-1.7e308, 0.0), (1.7e308, 1.0)], width=8, height=2)
    assert _plot_rows(across) == ["    ****", "****"]
    assert across.splitlines()[-1].split() == ["-1.7e+308", "1.7e+308"]
    top = line_chart([(0, 1.7976931348623157e308), (1, 0.0)], width=8, height=3)
    assert _plot_rows(top)[0].startswith("*")


def test_negative_values_and_a_constant_series() -> None:
    rows = _plot_rows(line_chart([(0, -1.0), (1, -3.0)], width=8, height=3))
    assert rows == ["**", "  ****", "      **"]
    assert _plot_rows(line_chart([(0, -2.0), (5, -2.0), (9, -2.0)], width=8, height=3)) == ["", "********", ""]


def test_non_finite_x_and_y_are_left_out() -> None:
    points = [(math.inf, 1.0), (-math.inf, 2.0), (math.nan, 3.0), (0, 1.0), (1, math.nan), (2, -math.inf), (3, 0.0)]
    assert line_chart(points, width=8, height=3) == line_chart([(0, 1.0), (3, 0.0)], width=8, height=3)
    assert line_chart([(math.inf, math.inf)], width=8, height=3, title="x") == "x\n(no data)"
