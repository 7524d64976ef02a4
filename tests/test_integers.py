"""impresslearn._integers: the one rule for what an integer argument or stored count is."""

import numpy as np
import pytest

from impresslearn._integers import is_count, is_integer


@pytest.mark.parametrize("value", [0, -3, 2**70, np.int64(5), np.uint8(7)])
def test_any_integer_type_is_an_integer(value):
    assert is_integer(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 8.0, "8", None, np.float32(2.0)])
def test_bools_floats_and_strings_are_not(value):
    assert not is_integer(value)
    assert not is_count(value)


def test_a_count_is_an_integer_of_at_least_the_minimum():
    assert is_count(0) and is_count(np.int32(4), 4) and not is_count(3, 4) and not is_count(-1)
    assert not is_count(True, 1)  # a bool is never a count, even where it would pass the bound
