"""Argument checks shared by the whole package.

Each check returns the value when it is valid and otherwise raises one ``ValueError`` of the
form ``"{name} must be <requirement>, got {value!r}"``, with ``name`` exactly as the caller
passes it (``"rank"``, ``"--samples"``, ``"evidence.steps"``). ``bool`` is never accepted as a
number. Checks with another type rule (``None`` allowed, ``"auto"`` strings, ``TypeError`` for
the wrong type) keep that part at the call site and use these for the rest.

Imports nothing heavy (no numpy or torch), so the command line's startup stays light.
"""
from __future__ import annotations

import math
from typing import Collection, TypeVar

__all__ = ["check_int", "check_number", "check_choice"]

T = TypeVar("T")


def check_int(value: object, name: str, minimum: int | None = None, *,
              maximum: int | None = None, allow_numpy: bool = False) -> int:
    """``value`` as an ``int`` with ``minimum <= value <= maximum`` (each bound optional).

    ``bool`` is rejected; NumPy integers are accepted only with ``allow_numpy=True``.
    """
    types: type | tuple[type, ...] = int
    if allow_numpy:
        import numpy as np  # here, not on import: the CLI sets thread limits before numpy loads
        types = (int, np.integer)
    if (isinstance(value, bool) or not isinstance(value, types)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        if minimum is not None and maximum is not None:
            requirement = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            requirement = f"an integer >= {minimum}"
        elif maximum is not None:
            requirement = f"an integer <= {maximum}"
        else:
            requirement = "an integer"
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return int(value)


def check_number(value: object, name: str, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None,
                 finite: bool = False) -> float:
    """``value`` (an ``int`` or ``float``) as a ``float`` within the given bounds.

    ``gt``/``ge``: ``value > gt`` / ``value >= ge``; ``lt``/``le``: ``value < lt`` /
    ``value <= le`` (at most one lower and one upper bound). NaN fails every bound;
    ``finite=True`` also rejects ``±inf``. ``bool`` is rejected.
    """
    if (gt is not None and ge is not None) or (lt is not None and le is not None):
        raise TypeError("check_number takes at most one lower (gt/ge) and one upper (lt/le) bound")
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (finite and isinstance(value, float) and not math.isfinite(value))
            or (gt is not None and not value > gt) or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt) or (le is not None and not value <= le)):
        raise ValueError(f"{name} must be {_number_requirement(gt, ge, lt, le, finite)}, "
                         f"got {value!r}")
    return float(value)


def _number_requirement(gt: float | None, ge: float | None, lt: float | None,
                        le: float | None, finite: bool) -> str:
    text = "a finite number" if finite else "a number"
    if (gt is not None or ge is not None) and (lt is not None or le is not None):
        low = f"({gt}" if gt is not None else f"[{ge}"
        high = f"{lt})" if lt is not None else f"{le}]"
        return f"{text} in {low}, {high}"
    for op, bound in ((">", gt), (">=", ge), ("<", lt), ("<=", le)):
        if bound is not None:
            return f"{text} {op} {bound}"
    return text


def check_choice(value: T, name: str, choices: Collection) -> T:
    """``value`` if it is one of ``choices`` (listed in the error message in their order)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
