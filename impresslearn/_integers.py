"""What counts as an integer argument or stored count, defined once for the whole package.

Any ``numbers.Integral`` (``int``, numpy integers) is an integer; a ``bool`` never is, although
Python makes it an ``int``: ``True`` where a count is expected is almost always a mistake (YAML
reads ``epochs: yes`` as a boolean), and a float (even ``8.0``) is a computation gone wrong.
The checks that raise (``impresslearn.ops._checks.check_int`` for the ops,
``impresslearn.config.check_integer`` for configurations) and the loaders that test stored
metadata all ask :func:`is_integer`. No torch here: the configuration modules import it.
"""

from __future__ import annotations

import numbers


def is_integer(value) -> bool:
    """True for any integer type but bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_count(value, minimum: int = 0) -> bool:
    """True for an integer (:func:`is_integer`) of at least ``minimum``."""
    return is_integer(value) and value >= minimum
