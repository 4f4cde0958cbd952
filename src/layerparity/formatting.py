"""How numbers, shapes, indices and names are written in every message and report.

One formatter each, used by the asserts (:mod:`layerparity.testing`), the text,
HTML and chart reports, and the CLI:

>>> fmt_num(0.000123456789), fmt_num(2.0), fmt_num(0.0), fmt_num(float("inf")), fmt_num(None)
('0.000123', '2', '0', 'inf', '-')
>>> fmt_num(2.0, 6, float_repr=True), fmt_num(1e-5, 6, float_repr=True)   # torch.testing's style
('2.0', '1e-05')
>>> fmt_shape((1, 3, 224, 224)), fmt_shape((10,)), fmt_index((1, 0, 2, 3)), fmt_index(None)
('(1, 3, 224, 224)', '(10,)', '(1, 0, 2, 3)', '-')
>>> clip_name("model/block_12/conv_3/BiasAdd", 16)
'model~_3/BiasAdd'
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt_num", "fmt_shape", "fmt_index", "clip_name", "NAME_WIDTH"]

#: Characters of a layer name in a table column before it is clipped.
NAME_WIDTH = 40


def fmt_num(x: float | None, digits: int = 3, *, float_repr: bool = False) -> str:
    """``x`` to ``digits`` significant digits: ``0``, ``0.000123``, ``1.5e-07``, ``inf``, ``nan``; ``-`` for None.

    ``float_repr=True`` writes the rounded value as Python (and torch.testing) print a
    float: ``2.0``, ``0.0``, ``1e-05``; the asserts' messages use it.
    """
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if float_repr:
        return repr(float(f"{x:.{digits}g}"))
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def fmt_shape(shape: Any) -> str:
    """A shape as a tuple literal: ``(1, 3, 5, 5)``, ``(10,)``, ``()``."""
    dims = [str(int(d)) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def fmt_index(idx: Any) -> str:
    """An element index as a tuple literal, ``-`` for None (no element)."""
    return "-" if idx is None else fmt_shape(idx)


def clip_name(s: str, width: int = NAME_WIDTH) -> str:
    """A name on one line, cut to ``width`` characters keeping both ends (graph op names
    carry the layer at the end): ``model~_3/BiasAdd``."""
    s = str(s).replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if len(s) <= width:
        return s
    head = width // 3
    return s[:head] + "~" + s[-(width - head - 1):]
