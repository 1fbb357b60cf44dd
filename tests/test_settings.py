"""custom.settings: numeric settings from configs and command lines are typed or refused by name."""

import pytest

from custom.settings import finite_number, integer_at_least


def test_integer_at_least():
    assert integer_at_least(3, "n", 1) == 3 and isinstance(integer_at_least(3, "n", 1), int)
    for bad in (0, 2.5, "3", True, None):
        with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got "):
            integer_at_least(bad, "n", 1)


def test_finite_number():
    assert finite_number(0, "x", 0.0) == 0.0 and finite_number(2, "x", 0.0, exclusive=True) == 2.0
    with pytest.raises(ValueError, match=r"^x must be a finite number > 0, got 0$"):
        finite_number(0, "x", 0.0, exclusive=True)
    for bad in (float("nan"), float("inf"), -1e-9, "1", False, None):
        with pytest.raises(ValueError, match=r"^x must be a finite number >= 0, got "):
            finite_number(bad, "x", 0.0)
