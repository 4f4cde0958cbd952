"""Asserts for test suites: ``assert_parity`` (two whole models) and ``assert_blob_close`` (one blob).

Both pass silently and raise ``AssertionError`` with a fixed, testable layout
when the numbers differ (see docs/testing.md). Bad input (a missing file, a lone
``rtol``, a tensor that is not in the declared layout) raises an
:class:`~layerparity.errors.InputError` instead: only a difference between the
models is an ``AssertionError``.

Default tolerances come from one table, by the dtype of the less precise side:
:data:`layerparity.metrics.DEFAULT_TOLERANCES` (float64, float32, float16; see
docs/tolerances.md). ``atol`` is *relative*, unlike numpy's and torch's: an element
may be off by ``atol * max|caffe|`` (the layer's largest Caffe value) plus
``rtol * |caffe|``, and the message says both factors.

>>> import numpy as np
>>> assert_blob_close(np.ones((1, 2, 1, 1), np.float32), np.ones((1, 1, 1, 2), np.float32))
>>> assert_blob_close(np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 3.0]), layout="", rtol=1e-4, atol=1e-5)
Traceback (most recent call last):
...
AssertionError: Blobs are not close!
<BLANKLINE>
Mismatched elements: 1 / 3 (33.3%)
Greatest absolute difference: 2.0 at index (1,) (up to 3e-05 allowed: atol 1e-05 x max|caffe| 3.0)
Greatest relative difference: 1.0 at index (1,) (up to 0.0001 allowed)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import InputDataError, InputError
from .formatting import fmt_index, fmt_num, fmt_shape
from .layout import relayout
from .result import LayerResult, Metrics, Report, Tolerance

__all__ = ["assert_parity", "assert_blob_close", "format_parity_failure", "format_blob_failure", "run_parity"]

#: Rows of the per-layer table an AssertionError shows (around the first divergence).
MESSAGE_MAX_ROWS = 15


# -- message builders (pure) -------------------------------------------------------


def _num(x: float) -> str:
    """A float the way torch.testing prints it: ``2.0``, ``1e-05``, ``0.000123457``, ``inf``."""
    return fmt_num(x, 6, float_repr=True)


def _allowed_abs(tol: Tolerance, m: Metrics) -> str:
    """What the absolute difference may be, said with its factors when atol is relative:
    ``up to 3e-05 allowed: atol 1e-05 x max|caffe| 3.0``."""
    if not tol.relative_atol:
        return f"up to {_num(tol.atol)} allowed"
    return f"up to {_num(tol.atol * m.scale)} allowed: atol {_num(tol.atol)} x max|caffe| {_num(m.scale)}"


def metric_lines(m: Metrics, tol: Tolerance) -> list[str]:
    """The torch.testing-style lines: mismatches, greatest abs/rel difference with index and allowance."""
    pct = 100.0 * m.mismatched_fraction
    lines = [f"Mismatched elements: {m.mismatched} / {m.total} ({pct:.1f}%)"]
    if m.nan_mismatch:
        lines.append(f"NaN/Inf mismatches: {m.nan_mismatch} (no tolerance passes these)")
    lines.append(
        f"Greatest absolute difference: {_num(m.max_abs_error)} at index {fmt_index(m.max_abs_index)} "
        f"({_allowed_abs(tol, m)})"
    )
    lines.append(
        f"Greatest relative difference: {_num(m.max_rel_error)} at index {fmt_index(m.max_rel_index)} "
        f"(up to {_num(tol.rtol)} allowed)"
    )
    return lines


def min_tolerance_line(m: Metrics, tol: Tolerance) -> str:
    unit = f" x max|caffe| ({_num(m.scale)})" if tol.relative_atol else ""
    return (
        f"Smallest tolerance that would pass: atol={_num(m.min_atol)}{unit} at rtol={_num(tol.rtol)}, "
        f"or rtol={_num(m.min_rtol)} at atol={_num(tol.atol)}"
    )


def format_blob_failure(
    m: Metrics, tol: Tolerance, name: str | None = None, converted_from: str | None = None
) -> str:
    """The message of :func:`assert_blob_close` for metrics that did not pass."""
    head = "Blobs are not close!" if name is None else f"Blobs of {name!r} are not close!"
    lines = [head, "", *metric_lines(m, tol)]
    if converted_from:
        lines.append(f"(indices are in Caffe's NCHW layout; the TF tensor was converted from {converted_from})")
    return "\n".join(lines)


def _row_tol(row: LayerResult, report: Report) -> Tolerance:
    """The row's tolerance; for a report that records none (hand-built, or read back without
    tolerances) the float32 default of :data:`layerparity.metrics.DEFAULT_TOLERANCES`, as the
    engine would have used."""
    from .metrics import default_tolerance

    return row.tolerance or report.tolerance or default_tolerance(np.float32)


def format_parity_failure(report: Report, max_rows: int | None = MESSAGE_MAX_ROWS) -> str:
    """The message of :func:`assert_parity` for a failing report. Layout (fixed)::

        Models diverge at Caffe layer 'conv2' (TF layer 'conv2')!

        Mismatched elements: ...                          # total error of that layer
        Greatest absolute difference: ... at index (n, c, h, w) (up to ... allowed)
        Greatest relative difference: ... at index (n, c, h, w) (up to ... allowed)
        (indices are Caffe coordinates: NCHW for 4-D blobs)
        Smallest tolerance that would pass: atol=... at rtol=..., or rtol=... at atol=...
        Own error (TF layer fed the Caffe input): max abs ..., max rel ...: the error starts in this layer
        Total error (in the TF model): max abs ..., max rel ...

        Diagnosis: <kind> (confidence ...): <summary>
        Fix: <fix>
        Other candidates: ...

        Layers (... compared; ...):
        <the per-layer table, capped around the first divergence>
    """
    from .report.text import format_table

    fd = report.first_divergence
    failing = [r for r in report.rows if not r.passed]
    row = fd if fd is not None else (failing[0] if failing else None)
    lines: list[str] = []
    cov = report.coverage
    if row is None:  # every compared row passes: the verdict fails on coverage
        lines.append("The TF port does not cover the Caffe net!")
        lines.append("")
        if cov is not None and cov.problem():
            lines.append(cov.problem())
            lines.append("")
    else:
        chain = f"chain {'+'.join(row.caffe_chain)}; " if len(row.caffe_chain) > 1 else ""
        where = f"Caffe layer {row.divergent_layer!r} ({chain}TF layer {row.tf_layer!r})"
        lines.append(f"Models diverge at {where}!" if fd is not None else f"Models diverge: first failing row is {where}!")
        lines.append("")
        tol = _row_tol(row, report)
        m = row.metrics
        if m is None:
            lines.append(
                f"Shapes do not match: Caffe {fmt_shape(row.caffe_shape)} != TF {fmt_shape(row.tf_shape)}"
                + (f" ({row.note})" if row.note else "")
            )
        else:
            lines += metric_lines(m, tol)
            lines.append("(indices are Caffe coordinates: NCHW for 4-D blobs)")
            lines.append(min_tolerance_line(m, tol))
            if row.note:
                lines.append(f"Note: {row.note}")
        if row.own is not None:
            verdict = (
                "the error starts in this layer"
                if not row.own.passed
                else "within tolerance: the error is inherited from upstream"
            )
            lines.append(
                f"Own error (TF layer fed the Caffe input): max abs {_num(row.own.max_abs_error)}, "
                f"max rel {_num(row.own.max_rel_error)}: {verdict}"
            )
        else:
            lines.append("Own error (TF layer fed the Caffe input): not measured")
        if m is not None:
            lines.append(f"Total error (in the TF model): max abs {_num(m.max_abs_error)}, max rel {_num(m.max_rel_error)}")
        lines.append("")
        if row.diagnoses:
            d = row.diagnoses[0]
            lines.append(f"Diagnosis: {d.kind} (confidence {_num(round(d.confidence, 2))}): {d.summary}")
            lines.append(f"Fix: {d.fix}")
            if len(row.diagnoses) > 1:
                lines.append("Other candidates: " + ", ".join(x.kind for x in row.diagnoses[1:4]))
        else:
            lines.append("Diagnosis: none")
        lines.append("")
    for d in report.conventions:
        lines.append(f"Port convention: {d.kind}: {d.summary}")
        lines.append(f"Fix: {d.fix}")
        lines.append("")
    if row is not None and cov is not None and cov.problem():
        lines.append(cov.problem())
        lines.append("")
    n_fail = len(failing)
    lines.append(f"Layers ({len(report.rows)} compared, {n_fail} out of tolerance; FIRST marks the first divergence):")
    lines.append(format_table(report, max_rows=max_rows, indent="  "))
    if report.unmapped_caffe or report.unmapped_tf:
        lines.append(
            f"Unmapped: {len(report.unmapped_caffe)} Caffe, {len(report.unmapped_tf)} TF layer(s)"
            " (pass mapping= to pair them)"
        )
    return "\n".join(lines)


# -- assert_blob_close -------------------------------------------------------------


def _to_nchw(x: np.ndarray, layout: str) -> tuple[np.ndarray, str | None]:
    """``x`` declared in ``layout`` (``NHWC``, ``NCHW``, ``NDHWC``, ``NC``, ``""``...) re-expressed
    with the channel axis second, as Caffe keeps it."""
    if not layout:
        return x, None
    if layout.startswith("flat:"):
        raise InputError(f"assert_blob_close: layout {layout!r} needs a flat_shape; unflatten the tensor first")
    if len(set(layout)) != len(layout) or not set(layout) <= set("NCDHW") or "N" not in layout or "C" not in layout:
        raise InputError(f"assert_blob_close: layout {layout!r} is not an axis-label string like 'NHWC' or 'NCHW'")
    if x.ndim != len(layout):
        raise InputDataError(f"assert_blob_close: the TF tensor has shape {x.shape} (rank {x.ndim}), which cannot be in layout {layout!r}")
    target = "NC" + "".join(a for a in layout if a not in "NC")
    if target == layout:
        return x, None
    return relayout(x, layout, None, target), layout


def assert_blob_close(
    caffe_blob: Any,
    tf_tensor: Any,
    layout: str = "NHWC",
    *,
    rtol: float | None = None,
    atol: float | None = None,
    name: str | None = None,
) -> None:
    """Assert one TF tensor equals one Caffe blob within tolerance (torch.testing style).

    ``tf_tensor`` is declared in ``layout`` (``"NHWC"`` by default; ``"NCHW"``, ``"NC"``
    or ``""`` for "compare as is") and converted to Caffe's NCHW first, so indices in
    the message are NCHW coordinates. ``rtol`` and ``atol`` go together or not at all;
    by default they come from the dtypes (:data:`layerparity.metrics.DEFAULT_TOLERANCES`).
    ``atol`` is *relative* (unlike numpy's and torch's): an element passes when
    ``|tf - caffe| <= atol * max|caffe_blob| + rtol * |caffe|``, and the message says
    ``up to 3e-05 allowed: atol 1e-05 x max|caffe| 3.0``.

    >>> import numpy as np
    >>> a = np.zeros((1, 2, 2, 2), np.float32)
    >>> b = np.zeros((1, 2, 2, 3), np.float32)   # NHWC with 3 channels
    >>> assert_blob_close(a, b)
    Traceback (most recent call last):
    ...
    AssertionError: Blob shapes do not match: Caffe (1, 2, 2, 2) != TF (1, 3, 2, 2) (TF (1, 2, 2, 3) in NHWC)
    """
    __tracebackhide__ = True
    from .metrics import check_tolerance_pair, compute_metrics, default_tolerance

    tol = check_tolerance_pair(rtol, atol, "assert_blob_close")
    ref = _array(caffe_blob, "caffe_blob")
    got_raw = _array(tf_tensor, "tf_tensor")
    got, converted = _to_nchw(got_raw, layout)
    if ref.shape != got.shape:
        what = f" (TF {fmt_shape(got_raw.shape)} in {layout})" if converted else ""
        prefix = f"{name!r}: " if name else ""
        raise AssertionError(f"{prefix}Blob shapes do not match: Caffe {fmt_shape(ref.shape)} != TF {fmt_shape(got.shape)}{what}")
    if tol is None:
        tol = default_tolerance(ref.dtype, got.dtype)
    m = compute_metrics(ref, got, tol)
    if not m.passed:
        raise AssertionError(format_blob_failure(m, tol, name=name, converted_from=converted))


def _array(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "numpy") and callable(x.numpy):  # a tf.Tensor / EagerTensor
        x = x.numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # noqa: BLE001
        raise InputDataError(f"assert_blob_close: {what} is not an array ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputDataError(f"assert_blob_close: {what} has dtype {a.dtype}; expected numbers")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise InputDataError(
            f"assert_blob_close: {what} is complex ({a.dtype}); only real numbers are compared "
            "(compare .real and .imag as two blobs)"
        )
    return a


# -- assert_parity -----------------------------------------------------------------


def _stored_inputs(x: Any) -> dict[str, np.ndarray] | None:
    """The NCHW inputs stored with a Caffe trace (object or archive path), else None."""
    from .trace import ArchiveReader, Trace, is_archive

    if isinstance(x, Trace):
        return dict(x.inputs) if x.framework == "caffe" and x.inputs else None
    if is_archive(x):
        with ArchiveReader(x) as r:
            return r.inputs() if r.framework == "caffe" else None
    return None


def run_parity(
    caffe_model: Any,
    tf_model: Any,
    inputs: Any,
    *,
    caffe_weights: Any = None,
    mapping: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerances: Mapping[str, Any] | None = None,
    own_error: bool = True,
    **kw: Any,
) -> Report:
    """Compare two models (paths, live objects, ``Trace`` s or trace archives) and return the Report.

    A trace archive on either side is used as recorded (the other side is run on
    ``inputs``); ``inputs=None`` reuses the inputs stored in a Caffe trace. A live
    TF model still gives own errors against a recorded Caffe trace (each TF layer
    is re-run on the recorded Caffe values).
    """
    from . import compare

    if inputs is None:
        inputs = _stored_inputs(caffe_model)
        if inputs is None:
            raise InputError(
                "assert_parity: inputs is None; pass the input array (NCHW) or a dict name -> array "
                "(None is only allowed with a Caffe trace archive that stores its inputs)"
            )
    _register_keras_objects(tf_model)
    return compare.compare_models(
        caffe_model, tf_model, inputs, caffe_weights=caffe_weights, mapping=mapping,
        rtol=rtol, atol=atol, tolerances=tolerances, own_error=own_error, **kw,
    )


def _register_keras_objects(tf_model: Any) -> None:
    """Keras files may use layerparity's own layers (LRN): make them loadable."""
    if isinstance(tf_model, (str, os.PathLike)) and os.fspath(tf_model).lower().endswith((".keras", ".h5", ".hdf5")):
        from .keras_layers import register_keras_objects

        register_keras_objects()


def assert_parity(
    caffe_model: Any,
    tf_model: Any,
    inputs: Any,
    *,
    caffe_weights: Any = None,
    mapping: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerances: Mapping[str, Any] | None = None,
    own_error: bool = True,
    max_rows: int | None = MESSAGE_MAX_ROWS,
    **kw: Any,
) -> Report:
    """Assert every mapped layer of the TF port matches the Caffe net; return the Report.

    ``caffe_model``: a prototxt path (with ``caffe_weights``), a live ``caffe.Net``,
    a ``Trace`` or a trace archive (``.npz``). ``tf_model``: a path (``.keras``,
    ``.h5``, SavedModel dir, frozen ``.pb``, ``.tflite``), a live ``keras.Model``,
    a ``Trace`` or a trace archive. ``inputs``: one NCHW array or a dict name ->
    array (``None`` to reuse the inputs stored in a trace archive).

    ``rtol`` and ``atol`` go together or not at all (default: by dtype, from
    :data:`layerparity.metrics.DEFAULT_TOLERANCES`); ``atol`` is *relative*: an element
    of a layer passes when ``|tf - caffe| <= atol * max|caffe| + rtol * |caffe|``, with
    ``max|caffe|`` that layer's largest Caffe value. ``tolerances`` overrides them per
    layer name or ``fnmatch`` pattern: ``{"fc*": (1e-3, 1e-4)}``.

    On failure the ``AssertionError`` names the first divergent layer (Caffe and TF
    names), the worst element's NCHW index, the greatest abs/rel difference with
    what was allowed and the smallest tolerance that would pass, own vs total
    error, the top diagnosis with its fix, and the per-layer table around the
    divergence (``max_rows`` rows, saying when capped). Layout: docs/testing.md.

    >>> assert_parity("deploy.prototxt", "port.keras", x, caffe_weights="w.caffemodel")  # doctest: +SKIP
    """
    __tracebackhide__ = True
    report = run_parity(
        caffe_model, tf_model, inputs, caffe_weights=caffe_weights, mapping=mapping,
        rtol=rtol, atol=atol, tolerances=tolerances, own_error=own_error, **kw,
    )
    if not report:
        raise AssertionError(format_parity_failure(report, max_rows=max_rows))
    return report
