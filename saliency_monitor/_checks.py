"""Argument checks shared by every layer: one message format, numpy scalars accepted.

Every error says what was expected and what was given, in torchmetrics' style:
``"Expected `name` to be ..., but got value."``. Numbers may be Python or numpy scalars
(``numbers.Integral`` / ``numbers.Real``); ``bool`` is never a number here. This module
imports nothing from the package, so the engine, the metrics and the monitor can all use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard, overload

import torch


def describe(value: object) -> str:
    """A short description of ``value`` for an error message (never a huge repr)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if type(value).__module__ == "numpy" and shape is not None:
        return f"a {dtype} array of shape {shape}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)!r}"
    if isinstance(value, (list, tuple)):
        kinds = sorted({_kind(v) for v in value})
        shown = ", ".join(kinds[:3]) + (", ..." if len(kinds) > 3 else "")
        return f"a {type(value).__name__} of {len(value)} items" + (f" ({shown})" if kinds else "")
    return f"a {_kind(value)}"


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def is_int(value: object) -> TypeGuard[numbers.Integral]:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[numbers.Real]:
    """A Python or numpy real number (int or float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: object, name: str, *, minimum: int = 0, expected: str | None = None) -> int:
    """``value`` as a Python int if it is an integer >= ``minimum``."""
    if is_int(value) and int(value) >= minimum:
        return int(value)
    expected = expected or ("a positive int" if minimum == 1 else f"an int >= {minimum}")
    raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}.")


def check_number(
    value: object, name: str, *, expected: str, valid: Callable[[float], bool] = lambda _: True
) -> float:
    """``value`` as a Python float if it is a finite real number for which ``valid`` holds."""
    if is_real(value) and math.isfinite(float(value)) and valid(float(value)):
        return float(value)
    raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}.")


@overload
def check_choice(value: object, name: str, choices: Sequence[str]) -> str: ...
@overload
def check_choice(value: object, name: str, choices: Sequence[str], *, or_none: bool) -> str | None: ...
def check_choice(value: object, name: str, choices: Sequence[str], *, or_none: bool = False) -> str | None:
    """``value`` if it is one of ``choices`` (or None when ``or_none``)."""
    if value is None and or_none:
        return None
    if not isinstance(value, str) or value not in choices:
        suffix = " or None" if or_none else ""
        raise ValueError(f"Expected `{name}` to be one of {list(choices)}{suffix}, but got {value!r}.")
    return value


def check_names(value: object, name: str) -> tuple[str, ...]:
    """A non-empty sequence of strings (not a bare string) -> a tuple."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"Expected `{name}` to be a sequence of strings, but got {value!r}.")
    if not value:
        raise ValueError(f"Expected `{name}` to name at least one, but got an empty sequence.")
    return tuple(value)


def check_distinct(values: Sequence[object], name: str) -> None:
    """Errors when a value occurs more than once, listing the repeated ones."""
    duplicates = sorted({str(v) for v in values if list(values).count(v) > 1})
    if duplicates:
        raise ValueError(f"Expected distinct `{name}`, but got duplicates: {duplicates}.")


def check_callable(value: object, name: str) -> Callable[..., Any] | None:
    """``value`` if it is None or callable."""
    if value is not None and not callable(value):
        raise TypeError(f"Expected `{name}` to be callable, but got {type(value).__name__}.")
    return value


def normalize_size(size: object, name: str = "size") -> tuple[int, int] | None:
    """None, a positive int or an (h, w) pair of positive ints -> None or (h, w)."""
    if size is None:
        return None
    pair = (size, size) if is_int(size) else size
    if isinstance(pair, (tuple, list)) and len(pair) == 2 and all(is_int(s) and int(s) > 0 for s in pair):
        return (int(pair[0]), int(pair[1]))
    raise ValueError(f"Expected `{name}` to be None, a positive int or (h, w), but got {size!r}.")
