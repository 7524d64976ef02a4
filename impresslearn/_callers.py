"""Where a warning should point: the first caller outside the package."""

from __future__ import annotations

import sys


def caller_outside_package() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside impresslearn (the user's
    ``fit``, ``learn_*`` or ``infer_task`` line), however many of the package's frames lie between."""
    frame, level = sys._getframe(1), 1  # the function that warns
    while frame is not None and frame.f_globals.get("__name__", "").startswith("impresslearn."):
        frame, level = frame.f_back, level + 1
    return level
