"""Row functions that return or raise what cannot be stored (loaded by workers).

``hostile(a)``: every 7th row (``a % 7 == 0``) returns or raises one of the
``BAD`` kinds in turn; every other row returns exact values of its three outputs
(``x`` float, ``v`` vector, ``df`` DataFrame).
"""

from __future__ import annotations

import decimal
import numbers

import numpy as np
import pandas as pd


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("__str__ of the user's exception")


class ReprRaises(Exception):
    def __str__(self):
        raise ValueError("no str")

    def __repr__(self):
        raise ValueError("no repr")


class StrNotText(Exception):
    def __str__(self):
        return 42  # str() raises TypeError


class Opaque:
    """An object whose str() and repr() raise."""

    def __str__(self):
        raise RuntimeError("str of a cell")

    __repr__ = __str__


class BadReal(numbers.Real):
    """Claims to be a number; converting it raises."""

    def __float__(self):
        raise ArithmeticError("no float")

    def __repr__(self):
        raise ArithmeticError("no repr")

    __abs__ = __add__ = __ceil__ = __eq__ = __floor__ = __floordiv__ = __le__ = __lt__ = \
        __mod__ = __mul__ = __neg__ = __pos__ = __pow__ = __radd__ = __rfloordiv__ = \
        __rmod__ = __rmul__ = __round__ = __rpow__ = __rtruediv__ = __truediv__ = \
        __trunc__ = __float__
    __hash__ = object.__hash__


def _good(a):
    return {"x": a * 0.5, "v": [a, a + 1.0], "df": pd.DataFrame({"a": [a], "s": [str(a)]})}


def _bad(kind, a):
    out = _good(a)
    if kind == "str_raises":
        raise StrRaises("x")
    if kind == "repr_raises":
        raise ReprRaises()
    if kind == "str_not_text":
        raise StrNotText()
    if kind == "ragged":
        out["v"] = [[1.0, 2.0], [3.0]]
    elif kind == "cell_2_70":
        out["df"] = pd.DataFrame({"a": pd.Series([2**70], dtype=object)})
    elif kind == "cell_str_raises":
        out["df"] = pd.DataFrame({"a": pd.Series([Opaque()], dtype=object)})
    elif kind == "complex_vector":
        out["v"] = np.array([1 + 2j, 3j])
    elif kind == "vector_repr_raises":
        out["v"] = Opaque()
    elif kind == "bad_real":
        out["x"] = BadReal()
    elif kind == "bytes_cell":
        out["df"] = pd.DataFrame({"a": [b"\x00\xff"]})
    elif kind == "decimal_cell":
        out["df"] = pd.DataFrame({"a": [decimal.Decimal("0.1")]})
    elif kind == "tuple_label":
        out["df"] = pd.DataFrame({("a", "b"): [1.0]})
    elif kind == "mixed_object":
        out["df"] = pd.DataFrame({"a": pd.Series([1, "1"], dtype=object)})
    elif kind == "uint64_beyond":
        out["df"] = pd.DataFrame({"a": np.array([2**64 - 1], np.uint64)})
    elif kind == "object_vector":
        out["v"] = np.array([{"k": 1}, None], dtype=object)
    return out


#: What every 7th row does, in turn, and the output its error names (None: it raised).
BAD = {
    "str_raises": None, "repr_raises": None, "str_not_text": None,
    "ragged": "v", "cell_2_70": "df", "cell_str_raises": "df", "complex_vector": "v",
    "vector_repr_raises": "v", "bad_real": "x", "bytes_cell": "df", "decimal_cell": "df",
    "tuple_label": "df", "mixed_object": "df", "uint64_beyond": "df", "object_vector": "v",
}
KINDS = list(BAD)


def bad_kind(a: int) -> str | None:
    """The bad kind of row ``a`` (None: a good row)."""
    return None if a % 7 else KINDS[(a // 7) % len(KINDS)]


def hostile(a):
    kind = bad_kind(int(a))
    return _good(a) if kind is None else _bad(kind, a)


def big_strings(a):
    """Row 1 returns a DataFrame of ~100 MB of strings; the others a small one."""
    n = 100 if a != 1 else 100_000
    return pd.DataFrame({"s": ["x" * 1000] * n, "i": range(n)})


def echo_frame(a):
    """Row ``a`` returns the generated frame number ``a`` of ``FRAMES`` (set by init)."""
    return FRAMES[int(a)]  # noqa: F821 - a global the service's objects() set


def echo_value(a):
    return VALUES[int(a)]  # noqa: F821 - a global the service's objects() set


def vector_of_objects(a):
    """A vectorised service: one value per row, every 5th one an unprintable object."""
    return [value_fns_opaque() if int(x) % 5 == 0 else f"ok{int(x)}" for x in a]


def value_fns_opaque():
    return Opaque()
