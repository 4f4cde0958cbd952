"""The data model: what one network computed for one input, and its portable archive.

A :class:`Trace` is an ordered list of :class:`Probe` records, one per layer output,
in execution (topological) order. Each probe carries the value, the layer that
produced it, its kind, the parameters that matter for diagnosis, its input edges,
and its *declared* layout (never guessed).

Layout strings name the axes in memory order: ``"NCHW"`` for Caffe blobs,
``"NHWC"`` for TensorFlow tensors, ``"NC"`` for 2-D, ``""`` when the axes carry no
spatial meaning (compared as they are). A flattened spatial tensor is
``"flat:NCHW"`` or ``"flat:NHWC"`` with ``flat_shape`` giving the per-item shape
before flattening, in that order (``(C, H, W)`` or ``(H, W, C)``).

The archive is one ``.npz`` file: the arrays under keys ``a0, a1, ...`` and a
UTF-8 JSON manifest under ``manifest``. It is read with ``allow_pickle=False``;
names are data only and are never used as paths.

>>> import numpy as np
>>> t = Trace(framework="caffe", source="lenet.prototxt")
>>> t.add(Probe(name="conv1", kind="Convolution", layout="NCHW",
...             value=np.zeros((1, 20, 24, 24), np.float32)))
>>> t["conv1"].shape
(1, 20, 24, 24)
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .atomic_write import atomic_path
from .errors import ArchiveError, InputDataError, InputError

FORMAT = "layerparity-trace"
FORMAT_VERSION = 1
_MAX_MANIFEST_BYTES = 64 * 1024 * 1024


@dataclass
class Probe:
    """One captured tensor: the output of one layer (or op) for the traced input.

    name
        Unique within its trace. Caffe: the layer name (``"layer/top"`` when a layer
        has several tops). TF: the Keras layer name or the graph op name.
    kind
        Caffe layer type (``"Convolution"``) or the Keras class / TF op type.
    layer
        The layer or op that produced it (defaults to ``name``).
    blob
        The Caffe top name or TF tensor name this value was read from. For Caffe
        in-place layers several probes share one blob; each probe holds the value
        right after its own layer ran.
    inputs
        Names of the probes this layer read (the graph's edges).
    params
        JSON-able parameters that matter for diagnosis (kernel, stride, pad, ...).
    fused
        Activations fused into this layer on the TF side (``["relu"]``), so it can
        be held against the Caffe value after the following in-place activation.
    layout, flat_shape
        Declared axis order; see the module docstring.
    """

    name: str
    kind: str = ""
    value: np.ndarray | None = None
    layer: str = ""
    blob: str = ""
    inputs: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    fused: list[str] = field(default_factory=list)
    layout: str = ""
    flat_shape: tuple[int, ...] | None = None
    shape: tuple[int, ...] = ()
    dtype: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"probe name must be a non-empty string, got {self.name!r}")
        for f in ("kind", "layer", "blob", "layout", "dtype"):
            if not isinstance(getattr(self, f), str):
                raise InputError(f"probe {self.name!r}: {f} must be a string, got {getattr(self, f)!r}")
        self.layer = self.layer or self.name
        self.blob = self.blob or self.name
        self.inputs = _names(self.inputs, self.name, "inputs")
        self.fused = _names(self.fused, self.name, "fused")
        if self.params is None:
            self.params = {}
        elif not isinstance(self.params, dict):
            if not isinstance(self.params, Mapping):
                raise InputError(f"probe {self.name!r}: params must be a dict, got {type(self.params).__name__}")
            self.params = dict(self.params)
        if self.flat_shape is not None:
            self.flat_shape = _dims(self.flat_shape, self.name, "flat_shape")
        if self.value is not None:
            try:
                self.value = np.asarray(self.value)
            except (TypeError, ValueError) as e:
                raise InputDataError(f"probe {self.name!r}: value is not an array ({e})") from None
            self.shape = tuple(int(d) for d in self.value.shape)
            self.dtype = str(self.value.dtype)
        else:
            self.shape = _dims(self.shape, self.name, "shape")

    def meta(self) -> dict[str, Any]:
        """Everything but the value, as JSON-able data."""
        return {
            "name": self.name,
            "kind": self.kind,
            "layer": self.layer,
            "blob": self.blob,
            "inputs": list(self.inputs),
            "params": _jsonable(self.params),
            "fused": list(self.fused),
            "layout": self.layout,
            "flat_shape": list(self.flat_shape) if self.flat_shape is not None else None,
            "shape": list(self.shape),
            "dtype": self.dtype,
        }

    def without_value(self) -> Probe:
        return Probe(**{**self.__dict__, "value": None})


class Trace:
    """Ordered probes of one network run on one input.

    ``framework`` is ``"caffe"`` or ``"tensorflow"``; ``source`` says what was run
    (a path or a description); ``inputs`` maps input names to the arrays fed, in the
    trace's own layout; ``meta`` holds anything else worth keeping (batch size,
    phase, model format...).
    """

    def __init__(
        self,
        framework: str,
        source: str = "",
        probes: Iterable[Probe] = (),
        inputs: dict[str, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(framework, str):
            raise InputError(f"Trace: framework must be a string ('caffe' or 'tensorflow'), got {framework!r:.80}")
        self.framework = framework
        self.source = str(source)
        for what, m in (("inputs", inputs), ("meta", meta)):
            if m is not None and not isinstance(m, Mapping):
                raise InputError(f"{framework} trace {self.source!r}: {what} must be a dict, got {type(m).__name__}")
        self.inputs: dict[str, np.ndarray] = dict(inputs or {})
        self.meta: dict[str, Any] = dict(meta or {})
        self._probes: dict[str, Probe] = {}
        if not isinstance(probes, Iterable) or isinstance(probes, (str, bytes, Probe)):
            raise InputError(f"{framework} trace {self.source!r}: probes must be an iterable of Probe objects, "
                             f"got {type(probes).__name__}")
        for p in probes:
            self.add(p)

    # -- container protocol -------------------------------------------------
    def add(self, probe: Probe) -> None:
        if not isinstance(probe, Probe):
            raise InputError(f"{self.framework} trace {self.source!r}: expected a Probe, got {type(probe).__name__}")
        if probe.name in self._probes:
            raise InputError(f"{self.framework} trace {self.source!r}: duplicate probe name {probe.name!r}")
        self._probes[probe.name] = probe

    def __getitem__(self, name: str) -> Probe:
        try:
            return self._probes[name]
        except KeyError:
            raise KeyError(f"{self.framework} trace {self.source!r} has no probe {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._probes

    def __iter__(self) -> Iterator[Probe]:
        return iter(self._probes.values())

    def __len__(self) -> int:
        return len(self._probes)

    @property
    def names(self) -> list[str]:
        return list(self._probes)

    @property
    def probes(self) -> list[Probe]:
        return list(self._probes.values())

    def __repr__(self) -> str:
        return f"Trace({self.framework!r}, {self.source!r}, {len(self)} probes)"

    def consumers(self, name: str) -> list[str]:
        """Names of the probes that read ``name``."""
        return [p.name for p in self if name in p.inputs]

    # -- archive -------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace to one portable ``.npz`` archive (arrays + JSON manifest)."""
        save_archive(path, self.framework, self.source, self.meta, self.inputs, iter(self))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read an archive written by :meth:`save` (never unpickles anything)."""
        reader = ArchiveReader(path)
        with reader:
            return cls(
                reader.framework,
                reader.source,
                reader.iter_probes(),
                inputs=reader.inputs(),
                meta=reader.meta,
            )


# -- archive -----------------------------------------------------------------


def save_archive(
    path: str | os.PathLike[str],
    framework: str,
    source: str,
    meta: dict[str, Any],
    inputs: dict[str, np.ndarray],
    probes: Iterable[Probe],
) -> None:
    """Stream probes into an archive, one array at a time (only one value in memory)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ArchiveError(f"{path}: cannot write the trace archive: the folder {folder!r} does not exist")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "framework": framework,
        "source": source,
        "meta": _jsonable(meta),
        "inputs": [],
        "probes": [],
    }
    n = 0
    with atomic_path(path, make_dirs=False) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:

        def put(arr: np.ndarray) -> str:
            nonlocal n
            key = f"a{n}"
            n += 1
            arr = np.asarray(arr)
            if arr.dtype == object:
                raise ArchiveError(f"{path}: refusing to store an object array")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr if arr.flags.c_contiguous else arr.copy(order="C"), allow_pickle=False)
            zf.writestr(key + ".npy", buf.getvalue())
            return key

        for name, arr in inputs.items():
            manifest["inputs"].append({"name": str(name), "key": put(arr)})
        for p in probes:
            entry = p.meta()
            entry["key"] = put(p.value) if p.value is not None else None
            manifest["probes"].append(entry)
        data = json.dumps(manifest, ensure_ascii=False).encode("utf-8")
        zf.writestr("manifest.npy", _bytes_npy(data))


def _bytes_npy(data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(data, dtype=np.uint8), allow_pickle=False)
    return buf.getvalue()


class ArchiveReader:
    """Lazy reader of a trace archive: the manifest is read at once, each array on demand."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise ArchiveError(f"{self.path}: no such trace archive")
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
            raise ArchiveError(f"{self.path}: not a layerparity trace archive ({e})") from None
        if not hasattr(self._npz, "files"):
            raise ArchiveError(f"{self.path}: not a layerparity trace archive (a bare .npy, not an .npz)")
        try:
            raw = self._npz["manifest"]
        except Exception as e:  # noqa: BLE001
            raise ArchiveError(f"{self.path}: no readable manifest ({e})") from None
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_MANIFEST_BYTES:
            raise ArchiveError(f"{self.path}: manifest is not UTF-8 JSON bytes")
        try:
            m = json.loads(raw.tobytes().decode("utf-8"))  # raw checked to be an ndarray above
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArchiveError(f"{self.path}: manifest is not valid JSON ({e})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ArchiveError(f"{self.path}: not a layerparity trace archive (format {m.get('format') if isinstance(m, dict) else None!r})")
        version = m.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ArchiveError(
                f"{self.path}: archive format version {version!r} is not supported "
                f"(this layerparity reads up to version {FORMAT_VERSION}; upgrade layerparity)"
            )
        self._m = m
        self.framework = _req(m, "framework", str, self.path)
        self.source = _req(m, "source", str, self.path)
        self.meta = _req(m, "meta", dict, self.path)
        self._probe_entries = _req(m, "probes", list, self.path)
        self._input_entries = _req(m, "inputs", list, self.path)
        seen: set[str] = set()
        for e in self._probe_entries:
            name = e.get("name") if isinstance(e, dict) else None
            if isinstance(name, str) and name in seen:
                raise ArchiveError(f"{self.path}: probe name {name[:200]!r} appears twice in the manifest")
            if isinstance(name, str):
                seen.add(name)

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._npz.close()

    def _array(self, key: Any, what: str) -> np.ndarray:
        if not isinstance(key, str) or key not in self._npz.files:
            raise ArchiveError(f"{self.path}: {what}: array {key!r} is missing from the archive")
        try:
            arr = self._npz[key]
        except ValueError as e:  # object arrays need pickle: refused
            raise ArchiveError(f"{self.path}: {what}: refusing to load array {key!r} ({e})") from None
        except Exception as e:  # noqa: BLE001
            raise ArchiveError(f"{self.path}: {what}: array {key!r} is unreadable ({e})") from None
        if not isinstance(arr, np.ndarray):
            raise ArchiveError(f"{self.path}: {what}: member {key!r} is not a .npy array")
        return arr

    def inputs(self) -> dict[str, np.ndarray]:
        out = {}
        for e in self._input_entries:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                raise ArchiveError(f"{self.path}: malformed input entry {str(e)[:80]!r}")
            out[e["name"]] = self._array(e.get("key"), f"input {e['name']!r}")
        return out

    def probe_metas(self) -> list[Probe]:
        """Every probe without its value (cheap)."""
        return [self._probe(e, with_value=False) for e in self._probe_entries]

    def iter_probes(self) -> Iterator[Probe]:
        """Every probe with its value, loaded one at a time."""
        for e in self._probe_entries:
            yield self._probe(e, with_value=True)

    def probe(self, name: str) -> Probe:
        """One probe with its value, by name (random access; reads only that array)."""
        for e in self._probe_entries:
            if isinstance(e, dict) and e.get("name") == name:
                return self._probe(e, with_value=True)
        raise KeyError(f"{self.path}: no probe {name!r}")

    def _probe(self, e: Any, with_value: bool) -> Probe:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
            raise ArchiveError(f"{self.path}: malformed probe entry {str(e)[:80]!r}")
        name = e["name"]
        try:
            kw = dict(
                name=name,
                kind=_opt(e, "kind", str, ""),
                layer=_opt(e, "layer", str, ""),
                blob=_opt(e, "blob", str, ""),
                inputs=_strs(_opt(e, "inputs", list, []), "inputs"),
                params=_opt(e, "params", dict, {}),
                fused=_strs(_opt(e, "fused", list, []), "fused"),
                layout=_opt(e, "layout", str, ""),
                flat_shape=tuple(int(d) for d in e["flat_shape"]) if e.get("flat_shape") is not None else None,
                shape=tuple(int(d) for d in _opt(e, "shape", list, [])),
                dtype=_opt(e, "dtype", str, ""),
            )
        except (TypeError, ValueError, OverflowError) as err:
            raise ArchiveError(f"{self.path}: probe {name!r}: malformed manifest entry ({err})") from None
        if kw["dtype"] and not _is_numeric_dtype(kw["dtype"]):
            raise ArchiveError(f"{self.path}: probe {name!r}: manifest dtype {kw['dtype'][:80]!r} is not a numeric dtype")
        if with_value and e.get("key") is not None:
            value = self._array(e.get("key"), f"probe {name!r}")
            if list(value.shape) != list(kw["shape"]):
                raise ArchiveError(
                    f"{self.path}: probe {name!r}: manifest says shape {tuple(kw['shape'])} "
                    f"but the stored array is {value.shape} (tampered archive?)"
                )
            if kw["dtype"] and str(value.dtype) != kw["dtype"]:
                raise ArchiveError(
                    f"{self.path}: probe {name!r}: manifest says dtype {kw['dtype']} "
                    f"but the stored array is {value.dtype} (tampered archive?)"
                )
            kw["value"] = value
        try:
            return Probe(**kw)
        except InputError as err:  # negative dimensions and the like: the file is bad, not the caller
            raise ArchiveError(f"{self.path}: malformed manifest entry: {err}") from None


def _names(xs: Any, probe: str, what: str) -> list[str]:
    """A probe's list of names (``inputs``, ``fused``): a list or tuple of strings; a bare
    string is refused (it would read as one name per character)."""
    if xs is None:
        return []
    if isinstance(xs, (str, bytes)) or not isinstance(xs, (list, tuple)):
        raise InputError(f"probe {probe!r}: {what} must be a list of names, got {type(xs).__name__} {xs!r:.80}")
    if not all(isinstance(x, str) for x in xs):
        raise InputError(f"probe {probe!r}: {what} must be a list of strings, got {list(xs)!r:.80}")
    return xs if isinstance(xs, list) else list(xs)


def _dims(xs: Any, probe: str, what: str) -> tuple[int, ...]:
    """A shape: a sequence of integers >= 0."""
    try:
        dims = tuple(xs)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise TypeError
    except TypeError:
        raise InputError(f"probe {probe!r}: {what} must be a sequence of integers >= 0, got {xs!r:.80}") from None
    return tuple(int(d) for d in dims)


def _strs(xs: list, field: str) -> list[str]:
    if not all(isinstance(x, str) for x in xs):
        raise ArchiveError(f"field {field!r} must be a list of strings")
    return list(xs)


def _is_numeric_dtype(name: str) -> bool:
    try:
        dt = np.dtype(name)
    except (TypeError, ValueError):
        return False
    return dt.kind in "biufc" or dt.name == "bfloat16"


def _req(m: dict, key: str, typ: type, path: str) -> Any:
    v = m.get(key)
    if not isinstance(v, typ):
        raise ArchiveError(f"{path}: manifest field {key!r} is missing or not a {typ.__name__}")
    return v


def _opt(m: dict, key: str, typ: type, default: Any) -> Any:
    v = m.get(key, default)
    if v is None:
        return default
    if not isinstance(v, typ):
        raise ArchiveError(f"field {key!r} is not a {typ.__name__}")
    return v


def _jsonable(x: Any) -> Any:
    """Plain JSON types from numpy scalars, tuples and nested containers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


def is_archive(path: Any) -> bool:
    """True if ``path`` is a path (``str`` or ``os.PathLike``) to a file that is a trace archive:
    a zip holding ``manifest.npy``, whatever the file is called (``.npz`` or not). The one
    rule every "is this a recorded trace?" question uses; never raises.
    """
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        if not os.path.isfile(path):
            return False
        with zipfile.ZipFile(os.fspath(path)) as zf:
            return "manifest.npy" in zf.namelist()
    except Exception:  # noqa: BLE001 - a yes/no question about any file never raises
        return False
