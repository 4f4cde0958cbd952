"""Graph capture: SavedModel, frozen GraphDef ``.pb``, ``tf.compat.v1.Session`` / ``tf.Graph``.

Everything is run as a TF1-style graph in a ``tf.compat.v1.Session``, where any
op output can be fetched (and any input fed) by name:

- a SavedModel is loaded, its serving signature (``serving_default``, else the
  first one) is frozen with ``convert_variables_to_constants_v2`` (which inlines
  the inner function calls into one GraphDef), and that GraphDef is imported
  into a fresh graph;
- a frozen ``.pb`` is parsed and imported as is;
- a Session is used as given (its graph, its variables); it is never closed here.

One probe per non-trivial op output, in graph order, all fetched in ONE
``Session.run``: ``name`` = op name (``op:1`` for a further output, kept only
when something consumes it), ``kind`` = op type, ``layer`` = the layer scope
(see :func:`~layerparity.backends.tfcommon.scope_layers`), ``params`` = the
op's attributes that matter (strides, padding, ...), plus constant operands
such as a ConcatV2 axis, ``inputs`` = producing probes (seen through Identity).

Trivial ops give no probe: constants, Identity and friends, NoOp, variable
reads, and shape plumbing (Shape and anything computed only from shapes and
constants). An op is captured when its value depends on a fed input.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputDataError, InputError, ModelLoadError
from ..trace import Probe
from .tfcommon import (
    TFBackend,
    cannot_run_error,
    cannot_run_here,
    clean_attr,
    first_line,
    import_tf,
    iter_filtered,
    layout_of_format,
    probe_layout,
    scope_layers,
)

__all__ = ["GraphBackend"]

PLACEHOLDERS = {"Placeholder", "PlaceholderV2"}
#: ops that pass their input through unchanged (seen through when naming inputs)
PASS_THROUGH = {
    "Identity",
    "IdentityN",
    "Snapshot",
    "StopGradient",
    "PreventGradient",
    "CheckNumerics",
    "EnsureShape",
}
#: ops that never give a probe
TRIVIAL = (
    PASS_THROUGH
    | PLACEHOLDERS
    | {
        "Const",
        "NoOp",
        "ReadVariableOp",
        "VarHandleOp",
        "VariableV2",
        "Variable",
        "Assign",
        "AssignVariableOp",
        "PlaceholderWithDefault",
        "Switch",
        "Merge",
        "Enter",
        "Exit",
        "NextIteration",
        "LoopCond",
    }
)
#: ops whose output is shape information, not data
SHAPE_OPS = {"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike"}
#: attributes kept in ``Probe.params``
ATTR_KEYS = (
    "strides",
    "padding",
    "explicit_paddings",
    "dilations",
    "data_format",
    "ksize",
    "epsilon",
    "depth_radius",
    "alpha",
    "beta",
    "bias",
    "is_training",
    "keep_dims",
    "transpose_a",
    "transpose_b",
    "align_corners",
    "half_pixel_centers",
    "mode",
    "squeeze_dims",
    "num_split",
)
#: constant operands kept in ``Probe.params``: op type -> [(input index, param name)]
CONST_OPERANDS = {
    "ConcatV2": [(-1, "axis")],
    "Concat": [(0, "axis")],
    "Pack": [],
    "Pad": [(1, "paddings")],
    "PadV2": [(1, "paddings"), (2, "constant_values")],
    "MirrorPad": [(1, "paddings")],
    "Transpose": [(1, "perm")],
    "Reshape": [(1, "shape")],
    "Mean": [(1, "axis")],
    "Sum": [(1, "axis")],
    "Max": [(1, "axis")],
    "Min": [(1, "axis")],
    "Prod": [(1, "axis")],
    "ExpandDims": [(1, "dim")],
    "Split": [(0, "axis")],
    "SplitV": [(1, "size_splits"), (2, "axis")],
    "ResizeBilinear": [(1, "size")],
    "ResizeNearestNeighbor": [(1, "size")],
    "Conv2DBackpropInput": [(0, "input_sizes")],
    "Softmax": [],
}
#: ops whose constant float operands are weights
WEIGHT_OPS = {
    "Conv2D",
    "Conv3D",
    "DepthwiseConv2dNative",
    "Conv2DBackpropInput",
    "Conv3DBackpropInputV2",
    "MatMul",
    "BatchMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
    "BiasAdd",
    "FusedBatchNorm",
    "FusedBatchNormV2",
    "FusedBatchNormV3",
    "Mul",
    "Add",
    "AddV2",
    "Sub",
    "Prelu",
}


@dataclass
class _Op:
    name: str
    tensor: Any
    op: Any
    kind: str
    inputs: list[str]
    data_inputs: list[Any]  # the tensors fed on replay, aligned with ``inputs``
    replayable: bool
    params: dict[str, Any]
    layer: str = ""
    fused: list[str] | None = None


class GraphBackend(TFBackend):
    """Capture backend for a TF graph run in a ``tf.compat.v1.Session``."""

    model_format = "graph"

    def __init__(
        self,
        graph: Any,
        *,
        source: str,
        session: Any = None,
        inputs: list[str] | None = None,
        outputs: list[str] | None = None,
        tensors: list[str] | None = None,
        data_format: str | None = None,
        tf_layout: str | None = None,
        model_format: str = "graph",
    ) -> None:
        tf = import_tf()
        super().__init__(source, tensors=tensors, data_format=data_format, tf_layout=tf_layout)
        self.model_format = model_format
        self.graph = graph
        self._own_session = session is None
        self.session = session if session is not None else tf.compat.v1.Session(graph=graph)
        self._default = self._data_format or "NHWC"
        self._replay_fns: dict[str, Any] = {}
        self._group_fns: dict[tuple[str, tuple[str, ...]], tuple[Any, list[Any]]] = {}
        self._batch_fns: dict[tuple[str, ...], Any] = {}
        self._forward_fns: dict[tuple[str, ...], tuple[list[str], Any]] = {}
        self._analyse(inputs, outputs)

    # -- constructors -----------------------------------------------------------
    @classmethod
    def from_saved_model(cls, path: str, **kw: Any) -> GraphBackend:
        """Open a SavedModel: its serving signature, frozen into one GraphDef, run in a
        Session. The frozen graph and its Session are kept per process (see
        :func:`clear_cache`), keyed by the files' sizes and times: opening the same
        unchanged SavedModel again skips loading and freezing, and the Session's
        compiled executors (capture, replays) are reused."""
        graph, session, (key, ins, outs) = _shared(path, lambda: _freeze_saved_model(path))
        if kw.get("inputs") is None:
            kw["inputs"] = list(ins)
        if kw.get("outputs") is None:
            kw["outputs"] = list(outs)
        return cls(graph, source=path, session=session, model_format=f"saved_model:{key}", **kw)

    @classmethod
    def from_graph_def_file(cls, path: str, **kw: Any) -> GraphBackend:
        """Open a frozen GraphDef file; kept per process like a SavedModel (see
        :meth:`from_saved_model`)."""
        graph, session, _ = _shared(path, lambda: (_read_graph_def(path), None))
        return cls(graph, source=path, session=session, model_format="graph_def", **kw)

    @classmethod
    def from_graph_def(cls, gd: Any, *, source: str, **kw: Any) -> GraphBackend:
        _check_frozen(gd, source)
        return cls(_import(gd, source), source=source, model_format="graph_def", **kw)

    @classmethod
    def from_session(cls, session: Any, **kw: Any) -> GraphBackend:
        return cls(
            session.graph,
            source=f"tf.compat.v1.Session {id(session):#x}",
            session=session,
            model_format="session",
            **kw,
        )

    @classmethod
    def from_graph(cls, graph: Any, *, source: str, **kw: Any) -> GraphBackend:
        return cls(graph, source=source, model_format="graph", **kw)

    # -- analysis -----------------------------------------------------------------
    def _tensor(self, name: str, what: str) -> Any:
        n = name if ":" in name else name + ":0"
        try:
            return self.graph.get_tensor_by_name(n)
        except (KeyError, ValueError):
            ph = [op.name for op in self.graph.get_operations() if op.type in PLACEHOLDERS]
            raise ModelLoadError(
                f"{self.source}: {what} {name!r} is not a tensor of the graph (placeholders: {ph[:10]})"
            ) from None

    def _analyse(self, input_names: list[str] | None, output_names: list[str] | None) -> None:
        ops = [op for op in self.graph.get_operations() if not op.name.startswith(_COPY_SCOPE)]
        if input_names is None:
            input_names = [op.outputs[0].name for op in ops if op.type in PLACEHOLDERS]
            if not input_names:
                raise ModelLoadError(
                    f"{self.source}: the graph has no Placeholder; name the input tensors with inputs="
                )
        feeds = [self._tensor(n, "input") for n in input_names]
        self._feeds = feeds
        fed = {t.name: _probe_name(t) for t in feeds}
        allowed = None
        if output_names:
            allowed = set()
            stack = [self._tensor(n, "output").op for n in output_names]
            while stack:
                op = stack.pop()
                if op.name in allowed:
                    continue
                allowed.add(op.name)
                stack.extend(t.op for t in op.inputs)

        data: set[str] = set(fed)
        needs_feed: set[str] = set(fed)
        blocked: set[str] = set()
        for op in ops:
            outs = [t.name for t in op.outputs]
            if any(t in fed for t in outs):
                continue
            if op.type in PLACEHOLDERS:
                needs_feed.update(outs)
                blocked.update(outs)
                continue
            ins = [t.name for t in op.inputs]
            if any(t in needs_feed for t in ins):
                needs_feed.update(outs)
            if op.type in SHAPE_OPS:
                continue
            if any(t in blocked for t in ins):
                blocked.update(outs)
            elif any(t in data for t in ins):
                data.update(outs)
        self._needs_feed = needs_feed

        consumed: set[str] = {t.name for op in ops for t in op.inputs}
        if output_names:
            consumed.update(self._tensor(n, "output").name for n in output_names)
        probe_of: dict[str, str] = dict(fed)
        candidates: list[tuple[Any, Any, str]] = []
        for op in ops:
            if op.type in TRIVIAL or (allowed is not None and op.name not in allowed):
                continue
            for i, t in enumerate(op.outputs):
                if t.name not in data or t.name in fed or not _numeric(t):
                    continue
                if i and t.name not in consumed:
                    continue
                name = op.name if i == 0 else f"{op.name}:{i}"
                probe_of[t.name] = name
                candidates.append((op, t, name))

        def resolve(t: Any) -> str | None:
            for _ in range(1000):
                if t.name in probe_of:
                    return probe_of[t.name]
                if t.op.type in PASS_THROUGH and t.op.inputs:
                    t = t.op.inputs[t.value_index if t.op.type == "IdentityN" else 0]
                    continue
                return None
            return None

        self._ops: list[_Op] = []
        for op, t, name in candidates:
            ins, data_ins, ok = [], [], True
            for x in op.inputs:
                if x.name not in data:
                    continue
                src = resolve(x)
                if src is None:
                    ok = False
                    continue
                ins.append(src)
                data_ins.append(x)
            rec = _Op(
                name,
                t,
                op,
                op.type,
                ins,
                data_ins,
                ok and bool(data_ins),
                _params(op),
                name,
                _fused(op),
            )
            self._ops.append(rec)
        layers = scope_layers([r.name for r in self._ops], {r.name: r.inputs for r in self._ops})
        for rec in self._ops:
            rec.layer = layers.get(rec.name, rec.name)
        self._by_name = {r.name: r for r in self._ops}
        self._fetch = [r for r in self._ops if self.wanted(r.name)]
        self.check_tensors(
            {r.name for r in self._ops}
            | {r.tensor.name for r in self._ops}
            | set(fed.values())
            | set(fed)
        )

        # inputs: shapes and layouts
        self._inputs = []
        self._input_dtypes = {}
        for t in feeds:
            name = fed[t.name]
            shape = tuple(t.shape.as_list()) if t.shape.rank is not None else None
            lay = self._data_format
            if lay is None and (shape is None or len(shape) == 4):
                lay = self._input_layout(name)
            self._inputs.append((name, shape, lay or self._default))
            self._input_dtypes[name] = t.dtype.as_numpy_dtype
        self._feed_by_name = {fed[t.name]: t for t in feeds}

    def _input_layout(self, name: str) -> str | None:
        """The layout of the 4-D input ``name`` as the model reads it, or None when the
        graph does not say.

        An op that reads the input directly and declares a ``data_format`` says it. Else
        the ops that only move data (``Pad``, ``Transpose``; ``Identity`` is seen through
        already) are followed from the input to the first op that declares one, composing
        the ``Transpose`` perms: ``Transpose(perm=[0, 2, 3, 1]) -> Conv2D(NHWC)`` (what
        onnx-tf writes) means the input is NCHW. Paths that disagree say nothing.
        """
        for r in self._ops:
            if name in r.inputs and layout_of_format(r.params.get("data_format")):
                return layout_of_format(r.params["data_format"])
        consumers: dict[str, list[_Op]] = {}
        for r in self._ops:
            for i in dict.fromkeys(r.inputs):
                consumers.setdefault(i, []).append(r)
        found: set[str] = set()
        # (probe, perm): the probe's axis i is the input's axis perm[i]
        stack: list[tuple[str, tuple[int, ...], int]] = [(name, (0, 1, 2, 3), 0)]
        seen: set[tuple[str, tuple[int, ...]]] = set()
        while stack:
            cur, perm, depth = stack.pop()
            if (cur, perm) in seen or depth > 32:
                continue
            seen.add((cur, perm))
            for r in consumers.get(cur, []):
                if not r.inputs or r.inputs[0] != cur:
                    continue
                declared = layout_of_format(r.params.get("data_format"))
                if declared is not None:
                    lay = [""] * 4
                    for i, a in enumerate(perm):
                        lay[a] = declared[i]
                    found.add("".join(lay))
                elif r.kind == "Transpose":
                    p = r.params.get("perm")
                    if isinstance(p, list) and sorted(int(x) for x in p) == [0, 1, 2, 3]:
                        stack.append((r.name, tuple(perm[int(x)] for x in p), depth + 1))
                elif r.kind in ("Pad", "PadV2", "MirrorPad"):
                    stack.append((r.name, perm, depth + 1))
        return found.pop() if len(found) == 1 else None

    def wanted(self, name: str) -> bool:
        if self._tensors is None:
            return True
        base, _, idx = name.partition(":")
        return name in self._tensors or f"{base}:{idx or 0}" in self._tensors

    # -- capture ------------------------------------------------------------------
    def _iter_capture_impl(self, inputs: dict[str, np.ndarray]) -> Iterator[Probe]:
        return iter_filtered(self._capture(self.model_feed(inputs)), self)

    def _run(self, fetches: Any, feed_dict: dict) -> Any:
        tf = import_tf()
        try:
            return self.session.run(fetches, feed_dict=feed_dict)
        except tf.errors.OpError as e:
            raise self._run_error(e) from None

    def _run_error(self, e: Any) -> Exception:
        """The one-line error for a failed run of the graph, naming the op."""
        op = getattr(e, "op", None)
        if cannot_run_here(e):
            what = "this graph"
            if op is not None:
                rec = self._by_name.get(op.name)
                what = f"op {op.name!r} ({op.type}, layer {rec.layer if rec else op.name!r})"
            return cannot_run_error(self.source, what, e)
        where = f" at op {op.name!r}" if op is not None else ""
        return InputDataError(f"{self.source}: running the graph failed{where}: {first_line(e.message)}")

    def _capture(self, feed: dict[str, np.ndarray]) -> Iterator[Probe]:
        fd = {
            self._feed_by_name[n]: feed[n].astype(self._input_dtypes[n], copy=False) for n in feed
        }
        values = self._run([r.tensor for r in self._fetch], fd) if self._fetch else []
        shapes: dict[str, tuple[int, ...]] = {}
        lays: dict[str, str] = {}
        layouts = self.input_layouts()
        for n in feed:
            arr = fd[self._feed_by_name[n]]
            lay = layouts[n] if arr.ndim == 4 else ("NC" if arr.ndim == 2 else "")
            shapes[n], lays[n] = arr.shape, lay
            yield Probe(
                name=n,
                kind="Input",
                value=arr,
                layer=n,
                blob=self._feed_by_name[n].name,
                layout=lay,
            )
        for rec, v in zip(self._fetch, values, strict=True):
            arr = np.asarray(v)
            layout, flat = self._layout(rec, arr.shape, shapes, lays)
            shapes[rec.name], lays[rec.name] = arr.shape, layout
            yield Probe(
                name=rec.name,
                kind=rec.kind,
                value=arr,
                layer=rec.layer,
                blob=rec.tensor.name,
                inputs=list(rec.inputs),
                params=rec.params,
                fused=list(rec.fused or []),
                layout=layout,
                flat_shape=flat,
            )

    def _forward_impl(self, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """One ``Session`` call fetching only the probes ``names`` (a callable cached per
        set of names: TF prunes and compiles that subgraph once)."""
        tf = import_tf()
        feed = self.model_feed(inputs)
        key = tuple(dict.fromkeys(names))
        entry = self._forward_fns.get(key)
        if entry is None:
            unknown = [n for n in key if n not in self._by_name and n not in self._feed_by_name]
            if unknown:
                raise InputDataError(f"{self.source}: the model produced no probe {unknown[0]!r}")
            outs = [n for n in key if n not in self._feed_by_name]
            feeds = [self._feed_by_name[n] for n in feed]
            fn = self.session.make_callable([self._by_name[n].tensor for n in outs], feed_list=feeds) if outs else None
            entry = self._forward_fns[key] = (outs, fn)
        outs, fn = entry
        args = [feed[n].astype(self._input_dtypes[n], copy=False) for n in feed]
        out = {n: a for n, a in zip(feed, args, strict=True) if n in key}
        if fn is not None:
            try:
                values = fn(*args)
            except tf.errors.OpError as e:
                raise self._run_error(e) from None
            out.update((n, np.asarray(v)) for n, v in zip(outs, values, strict=True))
        return out

    def _layout(
        self, rec: _Op, shape: tuple[int, ...], shapes: dict, lays: dict
    ) -> tuple[str, tuple[int, ...] | None]:
        perm = rec.params.get("perm")
        return probe_layout(
            shape,
            op={"Reshape": "reshape", "Transpose": "transpose"}.get(rec.kind, ""),
            in_layouts=[lays.get(n, "") for n in rec.inputs],
            in_shape=shapes.get(rec.inputs[0]) if rec.inputs else None,
            perm=perm if isinstance(perm, list) else None,
            data_format=rec.params.get("data_format"),
            default=self._default,
        )

    # -- weights and replay ---------------------------------------------------------
    def _weights_impl(self) -> dict[str, list[np.ndarray]]:
        wanted: list[tuple[str, Any]] = []
        scalars: list[tuple[str, Any]] = []
        for rec in self._ops:
            if rec.kind not in WEIGHT_OPS:
                continue
            for x in rec.op.inputs:
                if x.name in self._needs_feed or not x.dtype.is_floating:
                    continue
                if rec.kind in ("Mul", "Add", "AddV2", "Sub") and x.shape.rank == 0:
                    scalars.append((rec.name, x))  # a scalar factor (a Gemm's alpha), not a weight
                    continue
                wanted.append((rec.name, x))
        #: op -> its constant scalar operands (``Mul`` by a Gemm's alpha...), read with the weights;
        #: weights() leaves them out, weight parity uses them to check the folded formulas
        self.weight_scalars: dict[str, list[float]] = {}
        if not wanted and not scalars:
            return {}
        values = self._run([x for _, x in wanted + scalars], {})
        out: dict[str, list[np.ndarray]] = {}
        for (name, _), v in zip(wanted, values[: len(wanted)], strict=True):
            out.setdefault(name, []).append(np.asarray(v))
        for (name, _), v in zip(scalars, values[len(wanted):], strict=True):
            self.weight_scalars.setdefault(name, []).append(float(np.asarray(v)))
        return out

    def can_replay(self, probe_name: str) -> bool:
        rec = self._by_name.get(probe_name)
        return rec is not None and rec.replayable

    def replay(self, probe_name: str, inputs: list[np.ndarray]) -> np.ndarray:
        """Run op ``probe_name`` alone: its data inputs are fed ``inputs`` (in the
        graph's layout, one per entry of the probe's ``inputs``); constants and
        weights come from the graph. Uses one cached callable per op."""
        tf = import_tf()
        rec = self._by_name.get(probe_name)
        if rec is None or not rec.replayable:
            raise InputDataError(f"{self.source}: op {probe_name!r} cannot be replayed on its own")
        if len(inputs) != len(rec.inputs):
            raise InputDataError(
                f"{self.source}: op {probe_name!r} reads {len(rec.inputs)} input(s) {rec.inputs}; got {len(inputs)} array(s)"
            )
        uniq: list[Any] = []
        for t in rec.data_inputs:
            if t.name not in [u.name for u in uniq]:
                uniq.append(t)
        fn = self._replay_fns.get(probe_name)
        if fn is None:
            try:
                fn = self.session.make_callable(rec.tensor, feed_list=uniq)
            except Exception as e:  # noqa: BLE001
                raise InputDataError(
                    f"{self.source}: op {probe_name!r} cannot be replayed ({first_line(e)})"
                ) from None
            self._replay_fns[probe_name] = fn
        args = []
        for t in uniq:
            i = [x.name for x in rec.data_inputs].index(t.name)
            args.append(np.asarray(inputs[i]).astype(t.dtype.as_numpy_dtype, copy=False))
        try:
            return np.asarray(fn(*args))
        except tf.errors.OpError as e:
            raise InputDataError(
                f"{self.source}: replaying op {probe_name!r} failed: {first_line(e.message)}"
            ) from None

    def can_replay_group(self, output: str, inputs: list[str]) -> bool:
        """Whether the ops between the probes ``inputs`` and ``output`` can run alone."""
        return output in self._by_name and all(self._probe_tensor(n) is not None for n in inputs)

    def replay_group(self, output: str, inputs: list[str], arrays: list[np.ndarray]) -> np.ndarray:
        """Run the ops of one layer group (``Conv2D`` -> ``BiasAdd`` -> ``Relu``): feed the
        probes ``inputs`` with ``arrays`` (graph layout) and fetch probe ``output``."""
        tf = import_tf()
        key = (output, tuple(inputs))
        cached = self._group_fns.get(key)
        if cached is None:
            feeds = [self._probe_tensor(n) for n in inputs]
            if output not in self._by_name or any(t is None for t in feeds):
                raise InputDataError(f"{self.source}: group {inputs} -> {output!r} cannot be replayed")
            try:
                fn = self.session.make_callable(self._by_name[output].tensor, feed_list=feeds)
            except Exception as e:  # noqa: BLE001
                raise InputDataError(f"{self.source}: group -> {output!r} cannot be replayed ({first_line(e)})") from None
            cached = self._group_fns[key] = (fn, feeds)
        fn, feeds = cached
        args = [np.asarray(a).astype(t.dtype.as_numpy_dtype, copy=False) for a, t in zip(arrays, feeds, strict=True)]
        try:
            return np.asarray(fn(*args))
        except tf.errors.OpError as e:
            raise InputDataError(f"{self.source}: replaying group -> {output!r} failed: {first_line(e.message)}") from None
        except ValueError as e:  # a feed of the wrong shape
            raise InputDataError(f"{self.source}: replaying group -> {output!r} failed: {first_line(e)}") from None

    def replay_groups(
        self, requests: list[tuple[str, list[str], list[np.ndarray]]]
    ) -> list[np.ndarray | Exception]:
        """Every group of ``requests`` (``(output, inputs, arrays)`` as for
        :meth:`replay_group`) in ONE ``Session`` call: one pruned callable feeding all
        the groups' inputs and fetching all their outputs, cached per list of groups
        (the engine sends the same list on every check of the same models).

        Each group runs on a private copy of its ops (made once per Session, so also for the next
        backend opened on the same cached file; sharing the weights),
        so groups never see each other's inputs: one group's input may be another's
        output, or a tensor inside another group, and every result is what
        :meth:`replay_group` gives alone. One output per request, in order; a request
        that cannot be replayed (unknown probe, wrong number of arrays, an output that
        needs a tensor it is not fed, arrays the ops refuse) gets its
        :class:`InputDataError` in its slot.
        """
        items: list[_Replay | Exception] = []
        taken: set[tuple] = set()
        for output, inputs, arrays in requests:
            try:
                feeds = [self._probe_tensor(n) for n in inputs]
                if output not in self._by_name or any(t is None for t in feeds):
                    raise InputDataError(f"{self.source}: group {inputs} -> {output!r} cannot be replayed")
                items.append(self._replay_item(f"group -> {output!r}", self._by_name[output].tensor, feeds, arrays, taken))
            except InputError as e:
                items.append(e)
        return self._run_items(items)

    def replay_many(
        self, requests: list[tuple[str, list[np.ndarray]]]
    ) -> list[np.ndarray | Exception]:
        """Several single-op replays (as :meth:`replay`) in one ``Session`` call, like
        :meth:`replay_groups`; a faulty request gets its error in its slot."""
        items: list[_Replay | Exception] = []
        taken: set[tuple] = set()
        for name, inputs in requests:
            rec = self._by_name.get(name)
            try:
                if rec is None or not rec.replayable:
                    raise InputDataError(f"{self.source}: op {name!r} cannot be replayed on its own")
                if len(inputs) != len(rec.inputs):
                    raise InputDataError(
                        f"{self.source}: op {name!r} reads {len(rec.inputs)} input(s) {rec.inputs}; "
                        f"got {len(inputs)} array(s)"
                    )
                items.append(self._replay_item(f"op {name!r}", rec.tensor, rec.data_inputs, inputs, taken))
            except InputError as e:
                items.append(e)
        return self._run_items(items)

    def _replay_item(
        self, what: str, fetch: Any, feeds: list[Any], arrays: list[np.ndarray], taken: set[tuple]
    ) -> _Replay:
        """One replay request checked and ready: a private copy of its ops (see
        :meth:`_copy`) and the arrays for the copy's inputs. InputDataError if it
        cannot run alone."""
        if len(arrays) != len(feeds):
            raise InputDataError(f"{self.source}: {what} reads {len(feeds)} input(s); got {len(arrays)} array(s)")
        uniq: dict[str, tuple[Any, np.ndarray]] = {}
        for t, a in zip(feeds, arrays, strict=True):
            if t.name not in uniq:
                try:
                    uniq[t.name] = (t, np.asarray(a).astype(t.dtype.as_numpy_dtype, copy=False))
                except (TypeError, ValueError) as e:
                    raise InputDataError(f"{self.source}: {what}: input {t.name!r} is not usable ({e})") from None
        # the k-th request of one call for the same ops gets the k-th copy of them
        key = (fetch.name, tuple(uniq), 0)
        while key in taken:
            key = (key[0], key[1], key[2] + 1)
        taken.add(key)
        copies = _COPIES.setdefault(self.session, {})
        copy = copies.get(key)
        if copy is None:
            copy = copies[key] = self._copy(fetch, [t for t, _ in uniq.values()], len(copies))
        if isinstance(copy, str):
            raise InputDataError(f"{self.source}: {what} {copy}; cannot replay it alone")
        out, placeholders = copy
        return _Replay(what, out, placeholders, [a for _, a in uniq.values()])

    def _copy(self, fetch: Any, feeds: list[Any], n: int) -> tuple[Any, list[Any]] | str:
        """A private copy, in this graph, of the ops that compute ``fetch`` from ``feeds``,
        reading fresh placeholders instead of ``feeds`` and the original constants
        (weights are shared, not copied). Copies of different requests never see each
        other's inputs, so any set of them runs in one Session call. Returns
        ``(copied fetch, placeholders)``, or why it cannot be done."""
        tf = import_tf()
        fed = {t.name for t in feeds}
        order: list[Any] = []  # ops between the feeds and the fetch, inputs first
        seen: set[str] = set()
        stack: list[tuple[Any, bool]] = [(fetch.op, False)]
        while stack:
            op, done = stack.pop()
            if done:
                order.append(op)
                continue
            if op.name in seen:
                continue
            seen.add(op.name)
            if op.type in PLACEHOLDERS:
                return f"needs {op.outputs[0].name!r}, which is not among its inputs"
            stack.append((op, True))
            stack.extend((t.op, False) for t in op.inputs if t.name not in fed and t.op.name not in seen)
        data: set[str] = set()
        for op in order:
            if any(t.name in fed or t.op.name in data for t in op.inputs):
                data.add(op.name)
        if fetch.op.name not in data:
            return "does not depend on its inputs"
        scope = f"{_COPY_SCOPE}{n}"
        gd = tf.compat.v1.GraphDef()
        input_map: dict[str, Any] = {}
        with self.graph.as_default():
            placeholders = [
                tf.compat.v1.placeholder(t.dtype, t.shape, name=f"{scope}_in{i}") for i, t in enumerate(feeds)
            ]
        by_feed = dict(zip((t.name for t in feeds), placeholders, strict=True))
        for op in order:
            if op.name not in data:
                continue
            node = gd.node.add()
            node.CopyFrom(op.node_def)
            del node.input[:]
            for t in op.inputs:
                ref = t.op.name if t.value_index == 0 else f"{t.op.name}:{t.value_index}"
                node.input.append(ref)
                if t.op.name not in data:
                    input_map[f"{t.op.name}:{t.value_index}"] = by_feed.get(t.name, t)
        try:
            with self.graph.as_default():
                (out,) = tf.compat.v1.import_graph_def(
                    gd, input_map=input_map, return_elements=[fetch.name], name=scope
                )
        except Exception as e:  # noqa: BLE001
            return f"cannot be copied ({type(e).__name__}: {first_line(e)})"
        return out, placeholders

    def _run_items(self, items: list[_Replay | Exception]) -> list[np.ndarray | Exception]:
        out: list[np.ndarray | Exception | None] = [x if isinstance(x, Exception) else None for x in items]
        batch = [(i, x) for i, x in enumerate(items) if not isinstance(x, Exception)]
        if not batch:
            return out  # type: ignore[return-value]
        try:
            values = self._run_batch([x for _, x in batch])
        except Exception:  # noqa: BLE001 - find the faulty requests one by one
            for i, x in batch:
                out[i] = self._run_alone(x)
        else:
            for (i, _), v in zip(batch, values, strict=True):
                out[i] = np.asarray(v)
        return out  # type: ignore[return-value]

    def _run_batch(self, batch: list[_Replay]) -> list[Any]:
        feeds = [t for x in batch for t in x.feeds]
        key = tuple(x.fetch.name for x in batch)
        fn = self._batch_fns.get(key)
        if fn is None:
            fn = self._batch_fns[key] = self.session.make_callable([x.fetch for x in batch], feed_list=feeds)
        return fn(*(a for x in batch for a in x.arrays))

    def _run_alone(self, x: _Replay) -> np.ndarray | Exception:
        tf = import_tf()
        try:
            return np.asarray(self._run_batch([x])[0])
        except tf.errors.OpError as e:
            return InputDataError(f"{self.source}: replaying {x.what} failed: {first_line(e.message)}")
        except (TypeError, ValueError) as e:
            return InputDataError(f"{self.source}: replaying {x.what} failed: {first_line(e)}")

    def _probe_tensor(self, probe_name: str) -> Any:
        rec = self._by_name.get(probe_name)
        if rec is not None:
            return rec.tensor
        name = probe_name if ":" in probe_name else probe_name + ":0"
        try:
            return self.session.graph.get_tensor_by_name(name)
        except (KeyError, ValueError):
            return None

    def close(self) -> None:
        if self._own_session and self.session is not None:
            self.session.close()
            self.session = None


# -- helpers ------------------------------------------------------------------------


@dataclass
class _Replay:
    """One replay request ready to run: fetch ``fetch`` (in the request's private copy
    of its ops) with the copy's placeholders ``feeds`` fed ``arrays``."""

    what: str
    fetch: Any
    feeds: list[Any]
    arrays: list[np.ndarray]


#: name scope of the private op copies made for replay (never captured)
_COPY_SCOPE = "layerparity_replay_"
#: the op copies made in each Session's graph: (fetch, feeds, k) -> (copied fetch, placeholders)
#: or why not. Kept per Session, so backends sharing a cached graph share its copies.
_COPIES: weakref.WeakKeyDictionary[Any, dict[tuple, tuple[Any, list[Any]] | str]] = weakref.WeakKeyDictionary()


#: graphs opened from files in this process: stamp -> (graph, Session, extra)
_OPENED: OrderedDict[tuple, tuple[Any, Any, Any]] = OrderedDict()
#: how many are kept; an older one is dropped (its Session closes once no backend uses it)
CACHE_SIZE = 2


def clear_cache() -> None:
    """Forget the SavedModels and GraphDefs opened so far (their memory goes once no
    open backend uses them)."""
    _OPENED.clear()


def _stamp(path: str) -> tuple:
    """What identifies a model file or directory's content: its path and every file's size and time."""
    real = os.path.realpath(path)
    walk = os.walk(real) if os.path.isdir(real) else [(os.path.dirname(real), [], [os.path.basename(real)])]
    files = []
    for dp, _, fs in walk:
        for f in sorted(fs):
            try:
                st = os.stat(os.path.join(dp, f))
            except OSError:
                continue
            files.append((os.path.relpath(os.path.join(dp, f), real), st.st_size, st.st_mtime_ns))
    return (real, tuple(sorted(files)))


def _shared(path: str, make: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any, Any]:
    """``(graph, session, extra)`` for the model file ``path``: ``make()`` gives
    ``(GraphDef, extra)`` the first time (or when the files changed); the imported
    graph and a Session over it are kept for the next open."""
    tf = import_tf()
    stamp = _stamp(path)
    hit = _OPENED.get(stamp)
    if hit is not None:
        _OPENED.move_to_end(stamp)
        return hit
    gd, extra = make()
    graph = _import(gd, path)
    hit = _OPENED[stamp] = (graph, tf.compat.v1.Session(graph=graph), extra)
    while len(_OPENED) > CACHE_SIZE:
        _OPENED.popitem(last=False)
    return hit


def _freeze_saved_model(path: str) -> tuple[Any, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Load a SavedModel and freeze its serving signature (``serving_default``, else the
    first): ``(GraphDef, (signature key, input tensor names, output tensor names))``."""
    tf = import_tf()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    try:
        obj = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"{path}: not a loadable SavedModel ({type(e).__name__}: {first_line(e)})"
        ) from None
    sigs = dict(getattr(obj, "signatures", {}) or {})
    if not sigs:
        raise ModelLoadError(
            f"{path}: the SavedModel has no signatures to run; save it with one "
            "(keras: model.export(path); tf.saved_model.save(obj, path, signatures=...))"
        )
    key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    try:
        frozen = convert_variables_to_constants_v2(sigs[key])
        gd = frozen.graph.as_graph_def()
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"{path}: cannot freeze signature {key!r} ({type(e).__name__}: {first_line(e)})"
        ) from None
    ins = tuple(t.name for t in frozen.inputs if t.dtype != tf.resource)
    return gd, (key, ins, tuple(t.name for t in frozen.outputs))


def _read_graph_def(path: str) -> Any:
    """A frozen GraphDef file (binary, or text for ``.pbtxt``), checked."""
    tf = import_tf()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the file ({e.strerror or e})") from None
    gd = tf.compat.v1.GraphDef()
    try:
        if path.lower().endswith(".pbtxt"):
            from google.protobuf import text_format

            text_format.Parse(data.decode("utf-8"), gd)
        else:
            gd.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - DecodeError, ParseError, UnicodeDecodeError
        raise ModelLoadError(
            f"{path}: not a GraphDef (corrupt or another kind of file: {first_line(e)})"
        ) from None
    _check_frozen(gd, path)
    return gd


def _check_frozen(gd: Any, source: str) -> None:
    if not len(gd.node):
        raise ModelLoadError(f"{source}: holds no graph nodes (not a frozen GraphDef?)")
    variables = [n.name for n in gd.node if n.op in ("VariableV2", "VarHandleOp", "Variable")]
    if variables:
        raise ModelLoadError(
            f"{source}: the GraphDef is not frozen: it holds variables ({variables[0]!r}, ...) whose values "
            "it does not contain; freeze it (convert_variables_to_constants_v2) or pass the Session"
        )


def _probe_name(t: Any) -> str:
    return t.op.name if t.value_index == 0 else f"{t.op.name}:{t.value_index}"


def _numeric(t: Any) -> bool:
    tf = import_tf()
    return t.dtype not in (tf.resource, tf.variant, tf.string) and t.dtype.is_numpy_compatible


def _import(gd: Any, source: str) -> Any:
    tf = import_tf()
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.compat.v1.import_graph_def(gd, name="")
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"{source}: the GraphDef cannot be imported ({type(e).__name__}: {first_line(e)})"
        ) from None
    return graph


def _const_value(t: Any) -> Any:
    """The value of a constant tensor (seen through Identity), else None."""
    tf = import_tf()
    for _ in range(100):
        op = t.op
        if op.type == "Const":
            try:
                return tf.make_ndarray(op.get_attr("value"))
            except Exception:  # noqa: BLE001
                return None
        if op.type in PASS_THROUGH and op.inputs:
            t = op.inputs[0]
            continue
        return None
    return None


def _fused(op: Any) -> list[str]:
    """Activations fused into a grappler ``_FusedConv2D`` / ``_FusedMatMul`` (attr ``fused_ops``)."""
    if "fused_ops" not in op.node_def.attr:
        return []
    try:
        names = [clean_attr(x) for x in op.get_attr("fused_ops")]
    except Exception:  # noqa: BLE001
        return []
    return [n.lower() for n in names if n not in ("BiasAdd", "FusedBatchNorm", "Add")]


def _params(op: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    attrs = op.node_def.attr
    for k in ATTR_KEYS:
        if k in attrs:
            try:
                params[k] = clean_attr(op.get_attr(k))
            except Exception:  # noqa: BLE001
                continue
    for idx, key in CONST_OPERANDS.get(op.type, []):
        try:
            t = op.inputs[idx]
        except IndexError:
            continue
        v = _const_value(t)
        if v is not None:
            params[key] = clean_attr(np.asarray(v))
    return params
