"""pytest plugin: the ``parity`` fixture, golden Caffe traces, ``--parity-*`` options.

Registered through the ``pytest11`` entry point, so installing layerparity is
enough. Nothing here imports Caffe or TensorFlow until a check runs.

Options (group ``layerparity``):

``--parity-rtol R --parity-atol A``
    Tolerance for every check that does not pass its own (given together or not at all).
``--parity-report DIR``
    For each failing check, write ``DIR/<node id>.html`` and ``.json`` (node id
    sanitized; a second failing check in one test gets ``-2``, ...).
``--parity-regen``
    (Re)record the golden Caffe traces (``parity.check(..., golden="name")``):
    needs Caffe. Later runs need only TensorFlow.
``--parity-no-reuse``
    Open the models anew in every check (default: once per session, see
    :mod:`layerparity.model_cache`).
``--parity-keras-module FILE.py`` (repeatable; ini ``parity_keras_modules``)
    Import this module of custom Keras layers (it registers them with
    ``keras.saving.register_keras_serializable``, or offers a dict
    ``custom_objects``) before the first check loads a ``.keras``/``.h5`` port;
    every check then loads such ports with them.

``--parity-caffe-pythonpath DIR`` (repeatable; ini ``parity_caffe_pythonpath``)
    A folder holding the modules of the Caffe nets' Python layers, put on the
    Caffe worker's path for every check (and ``caffe_net``) in the session; a
    check's own ``caffe_pythonpath=`` comes first.

Fixtures: ``parity`` (``.check(caffe_model, tf_model, inputs, **kw) -> Report``;
models given as paths or live objects are opened once per session and reused),
``parity_models`` (session: the :class:`~layerparity.model_cache.ModelCache`),
``parity_golden`` (``.check(...)`` with a golden named after the test),
``caffe_net`` and ``tf_model`` (factories: ``caffe_net(prototxt, weights)``,
``tf_model(path)``; the backends are closed after the test).

Example (see docs/pytest.md)::

    def test_port(parity):
        parity.check("deploy.prototxt", "port.keras", x, caffe_weights="w.caffemodel",
                     golden="port")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from .errors import InputError

REGEN_FLAG = "--parity-regen"
GOLDEN_SUFFIX = ".caffe.npz"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")

_session_start_key = pytest.StashKey[float]()
_regenerated_key = pytest.StashKey[set]()
_keras_objects_key = pytest.StashKey[dict]()


# -- options -----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("layerparity", "layerparity: Caffe vs TensorFlow parity checks")
    group.addoption(
        "--parity-rtol", type=float, default=None, metavar="R",
        help="rtol for parity checks that give none (with --parity-atol; both or neither)",
    )
    group.addoption(
        "--parity-atol", type=float, default=None, metavar="A",
        help="atol (times each layer's max|caffe|) for parity checks that give none (with --parity-rtol)",
    )
    group.addoption(
        "--parity-report", default=None, metavar="DIR",
        help="write an HTML and a JSON report per failing parity check into DIR (named after the test node id)",
    )
    group.addoption(
        "--parity-no-reuse", action="store_true", default=False,
        help="open the models anew for every parity check (default: each model is opened once per session)",
    )
    group.addoption(
        "--parity-keras-module", action="append", default=[], metavar="FILE.py",
        help="a module of custom Keras layers the ports use (imported before the first check; repeatable)",
    )
    parser.addini(
        "parity_keras_modules", type="linelist", default=[],
        help="modules of custom Keras layers the ports use (.py paths relative to the rootdir, or module names)",
    )
    group.addoption(
        "--parity-caffe-pythonpath", action="append", default=[], metavar="DIR",
        help="a folder holding the modules of the Caffe nets' Python layers (put on the Caffe worker's path; "
             "repeatable)",
    )
    parser.addini(
        "parity_caffe_pythonpath", type="linelist", default=[],
        help="folders holding the modules of the Caffe nets' Python layers (relative to the rootdir)",
    )
    group.addoption(
        REGEN_FLAG, action="store_true", default=False,
        help="record the golden Caffe traces again (needs Caffe); later runs compare TF against them",
    )


def pytest_configure(config: pytest.Config) -> None:
    from .errors import InputError
    from .metrics import check_tolerance_pair  # the one validator (API, CLI and here)

    try:
        check_tolerance_pair(config.getoption("--parity-rtol"), config.getoption("--parity-atol"),
                             names=("--parity-rtol", "--parity-atol"))
    except InputError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[_session_start_key] = time.time()
    config.stash[_regenerated_key] = set()


# -- helpers -----------------------------------------------------------------------------


def keras_custom_objects(config: pytest.Config) -> dict:
    """The objects of ``--parity-keras-module`` / ``parity_keras_modules``, each module
    imported once per session (on first use, so TensorFlow loads only when a check runs)."""
    if _keras_objects_key in config.stash:
        return config.stash[_keras_objects_key]
    from .backends.keras import import_keras_module

    specs = list(config.getoption("--parity-keras-module") or [])
    for line in config.getini("parity_keras_modules") or []:
        spec = str(line)
        if spec.endswith(".py") and not os.path.isabs(spec):
            spec = str(Path(str(config.rootpath)) / spec)
        specs.append(spec)
    objects: dict = {}
    for spec in specs:
        objects.update(import_keras_module(spec))
    config.stash[_keras_objects_key] = objects
    return objects


def _with_custom_objects(config: pytest.Config, kw: dict) -> dict:
    """``kw`` with ``custom_objects`` (its own, merged over the session's modules') moved
    into ``tf_options``, as a hashable value so reused models are keyed by it."""
    from .backends.keras import frozen_custom_objects

    kw = dict(kw)
    own = kw.pop("custom_objects", None)
    session = keras_custom_objects(config) if (config.getoption("--parity-keras-module")
                                               or config.getini("parity_keras_modules")) else {}
    tf_options = dict(kw.get("tf_options") or {})
    given = [g for g in (tf_options.get("custom_objects"), own) if g is not None]
    if not given and not session:
        return kw
    merged: dict = dict(session)
    if given:
        from .backends.keras import custom_objects_dict

        for g in given:  # the call's own objects win over the session's modules'
            merged.update(custom_objects_dict(g))
    tf_options["custom_objects"] = frozen_custom_objects(merged)
    kw["tf_options"] = tf_options
    return kw


def caffe_pythonpath(config: pytest.Config) -> list[str]:
    """The folders of ``--parity-caffe-pythonpath`` then ini ``parity_caffe_pythonpath``
    (relative ones from the rootdir), for the Caffe worker's path."""
    dirs = [str(d) for d in config.getoption("--parity-caffe-pythonpath") or []]
    for line in config.getini("parity_caffe_pythonpath") or []:
        d = str(line)
        dirs.append(d if os.path.isabs(d) else str(Path(str(config.rootpath)) / d))
    return dirs


def _with_caffe_pythonpath(config: pytest.Config, kw: dict) -> dict:
    """``kw`` with ``caffe_pythonpath`` (its own first, then the session's folders) moved
    into ``caffe_options["pythonpath"]``, a tuple, so reused Caffe models are keyed by it."""
    kw = dict(kw)
    own = kw.pop("caffe_pythonpath", None)
    caffe_options = dict(kw.get("caffe_options") or {})
    dirs: list[str] = []
    for given in (own, caffe_options.get("pythonpath"), caffe_pythonpath(config)):
        if given is None:
            continue
        for d in [given] if isinstance(given, (str, os.PathLike)) else list(given):
            if os.fspath(d) not in dirs:
                dirs.append(os.fspath(d))
    if not dirs:
        return kw
    caffe_options["pythonpath"] = tuple(dirs)
    kw["caffe_options"] = caffe_options
    return kw


def sanitize_nodeid(nodeid: str, limit: int = 120) -> str:
    """A file name from a node id: ``::`` becomes ``__``, ``/`` and other unsafe characters
    ``_``; when something besides ``/`` was replaced, or the id is cut at ``limit``,
    a short hash of the id is appended so distinct ids never share a file.

    >>> sanitize_nodeid("tests/test_port.py::test_conv")
    'tests_test_port.py__test_conv'
    >>> sanitize_nodeid("tests/test_port.py::test_conv[a b]")
    'tests_test_port.py__test_conv_a_b-bc93c4bb'
    """
    s = nodeid.replace("::", "__")
    lossy = re.sub(r"[^A-Za-z0-9._/-]+", "_", s) != s  # something besides "/" was replaced
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._-") or "test"
    digest = "-" + hashlib.sha256(nodeid.encode()).hexdigest()[:8]
    if len(s) > limit:
        return s[: limit - len(digest)] + digest
    return s + digest if lossy else s


def _sha256_file(path: str) -> str:
    from .model_cache import content_digest  # the one file digest (memoised by size and mtime)

    return content_digest(path)


def inputs_sha256(inputs: Any) -> str:
    """Hash of the inputs as the models receive them (float32, NCHW), by input name."""
    import numpy as np

    items = sorted(inputs.items()) if isinstance(inputs, dict) else [("", inputs)]
    h = hashlib.sha256()
    for name, arr in items:
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
        h.update(f"{name}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def golden_hashes(caffe_model: Any, caffe_weights: Any, inputs: Any) -> dict[str, str | None]:
    def path_hash(p: Any, what: str) -> str | None:
        if p is None:
            return None
        if not isinstance(p, (str, os.PathLike)):
            raise InputError(f"golden traces need the Caffe {what} as a file path, got a {type(p).__name__}")
        if not os.path.isfile(p):
            raise InputError(f"{os.fspath(p)}: no such Caffe {what} file (needed to check the golden trace is current)")
        return _sha256_file(os.fspath(p))

    return {
        "prototxt_sha256": path_hash(caffe_model, "prototxt"),
        "caffemodel_sha256": path_hash(caffe_weights, "caffemodel"),
        "input_sha256": inputs_sha256(inputs) if inputs is not None else None,
    }


def _lock_path(path: Path) -> Path:
    """A lock file for ``path`` outside the test tree (nothing to commit by accident)."""
    import tempfile

    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "layerparity-locks" / f"{key}.lock"


class _FileLock:
    """An exclusive lock on ``path`` (fcntl; a no-op where fcntl is missing), for xdist workers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: Any = None

    def __enter__(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a+b")
        try:
            import fcntl

            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            import fcntl

            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
        except ImportError:  # pragma: no cover
            pass
        self._f.close()


# -- the fixture objects -------------------------------------------------------------------


class ParityChecker:
    """What the ``parity`` fixture returns: one verb, :meth:`check`.

    >>> def test_port(parity):                                     # doctest: +SKIP
    ...     parity.check("deploy.prototxt", "port.keras", x, caffe_weights="w.caffemodel")
    """

    def __init__(self, request: pytest.FixtureRequest, models: Any = None) -> None:
        self._request = request
        self._config = request.config
        self._failures = 0
        self.models = models  # the session's ModelCache (None with --parity-no-reuse)

    # -- paths
    def golden_path(self, name: str) -> Path:
        """``<test dir>/<test module stem>/<name>.caffe.npz`` (like pytest-regressions' data dir)."""
        if not isinstance(name, str) or not _NAME_OK.match(name) or ".." in name:
            raise InputError(
                f"golden name {name!r}: use letters, digits, '.', '_' and '-' only (it becomes a file name)"
            )
        mod = Path(str(self._request.path))
        return mod.parent / mod.stem / f"{name}{GOLDEN_SUFFIX}"

    def shown_path(self, path: Path) -> str:
        """``path`` as messages show it: relative to the pytest rootdir when under it."""
        root = Path(str(self._config.rootpath)).resolve()
        try:
            return str(Path(path).resolve().relative_to(root))
        except ValueError:
            return str(path)

    def check(
        self,
        caffe_model: Any,
        tf_model: Any,
        inputs: Any = None,
        *,
        caffe_weights: Any = None,
        mapping: Any = None,
        rtol: float | None = None,
        atol: float | None = None,
        tolerances: Any = None,
        own_error: bool = True,
        golden: str | None = None,
        **kw: Any,
    ) -> Any:
        """Assert the TF model matches the Caffe model (like ``assert_parity``); return the Report.

        ``rtol``/``atol`` default to ``--parity-rtol``/``--parity-atol`` when given; ``atol``
        is relative, as in ``compare_models``: times each layer's max|caffe| (``atol=1e-5``
        allows 3e-05 on a layer whose largest value is 3).
        Models given as paths or live objects are opened once per session and reused
        (keyed by file contents, options and identity; ``--parity-no-reuse`` turns it off).
        Other keywords (``partial``, ``tf_inputs``, ``tf_layout``, ``tf_options``,
        ``caffe_options``, ``custom_objects``...) go to ``compare_models``; the custom
        Keras objects of ``--parity-keras-module`` are added to ``custom_objects``.
        ``golden="name"``: compare against the recorded Caffe trace
        ``<test dir>/<module>/<name>.caffe.npz`` instead of running Caffe; record it
        with ``--parity-regen``. The recording's inputs and the caffemodel's weights
        (read without Caffe) feed the diagnosis, which is confirmed as in a live run. A missing or stale recording (prototxt, caffemodel
        or input hash changed) fails and says to use ``--parity-regen``.
        """
        __tracebackhide__ = True
        from .testing import format_parity_failure, run_parity

        if rtol is None and atol is None:
            rtol, atol = self._config.getoption("--parity-rtol"), self._config.getoption("--parity-atol")
        caffe_side = caffe_model
        kw = _with_caffe_pythonpath(self._config, kw)
        if golden is not None:
            caffe_side = self._golden(golden, caffe_model, caffe_weights, inputs,
                                      pythonpath=(kw.get("caffe_options") or {}).get("pythonpath"))
        # golden: the caffemodel (hashed with the recording) still gives the diagnosis Caffe's
        # weights, read without Caffe, so it confirms what it finds as a live run does
        kw = _with_custom_objects(self._config, kw)
        with contextlib.ExitStack() as held:
            if self.models is not None:  # open models are reused across the session
                caffe_side, caffe_weights, tf_model, kw = self.models.open_sides(
                    held, caffe_side, caffe_weights, tf_model, kw)
            report = run_parity(
                caffe_side, tf_model, inputs, caffe_weights=caffe_weights,
                mapping=mapping, rtol=rtol, atol=atol, tolerances=tolerances, own_error=own_error, **kw,
            )
        if not report:
            msg = format_parity_failure(report)
            written = self._write_reports(report)
            if written:
                msg += "\nReports: " + ", ".join(written)
            raise AssertionError(msg)
        return report

    def _golden(self, name: str, caffe_model: Any, caffe_weights: Any, inputs: Any, pythonpath: Any = None) -> str:
        __tracebackhide__ = True
        path = self.golden_path(name)
        shown = self.shown_path(path)
        regen = self._config.getoption(REGEN_FLAG)
        if regen:
            if caffe_model is None:
                raise InputError(f"{REGEN_FLAG}: recording golden {name!r} needs the Caffe prototxt (caffe_model)")
            if inputs is None:
                raise InputError(f"{REGEN_FLAG}: recording golden {name!r} needs inputs")
            self._record(path, caffe_model, caffe_weights, inputs, pythonpath=pythonpath)
            return str(path)
        if not path.is_file():
            pytest.fail(
                f"golden Caffe trace {shown} is missing: record it with `pytest {REGEN_FLAG}` (needs Caffe)",
                pytrace=False,
            )
        from .trace import ArchiveReader

        with ArchiveReader(path) as r:
            recorded = r.meta.get("golden") if isinstance(r.meta, dict) else None
        if not isinstance(recorded, dict):
            pytest.fail(f"golden Caffe trace {shown} has no recorded hashes: re-record it with `pytest {REGEN_FLAG}`", pytrace=False)
        current = golden_hashes(caffe_model, caffe_weights, inputs)
        stale = [
            k.replace("_sha256", "")
            for k, v in current.items()
            if v is not None and recorded.get(k) != v
        ]
        if stale:
            pytest.fail(
                f"golden Caffe trace {shown} is stale: the {', '.join(stale)} changed since it was recorded; "
                f"re-record it with `pytest {REGEN_FLAG}` (needs Caffe)",
                pytrace=False,
            )
        return str(path)

    def _record(self, path: Path, caffe_model: Any, caffe_weights: Any, inputs: Any, pythonpath: Any = None) -> None:
        """Capture the Caffe trace and save it with its hashes; once per session per file,
        under a lock so xdist workers never write the same file at the same time."""
        hashes = golden_hashes(caffe_model, caffe_weights, inputs)
        done: set = self._config.stash[_regenerated_key]
        if str(path) in done:
            return
        with _FileLock(_lock_path(path)):
            if path.is_file() and path.stat().st_mtime >= self._config.stash[_session_start_key]:
                from .trace import ArchiveReader

                with ArchiveReader(path) as r:  # another worker recorded it in this session
                    if isinstance(r.meta, dict) and r.meta.get("golden") == hashes:
                        done.add(str(path))
                        return
            from .backends.caffe import capture_caffe

            trace = capture_caffe(caffe_model, caffe_weights, inputs, pythonpath=pythonpath)
            trace.meta = {
                **trace.meta,
                "golden": hashes,
                "golden_sources": {
                    "prototxt": os.path.basename(os.fspath(caffe_model)),
                    "caffemodel": os.path.basename(os.fspath(caffe_weights)) if caffe_weights is not None else None,
                },
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            trace.save(path)  # atomic: written to .partial, then renamed
        done.add(str(path))

    def _write_reports(self, report: Any) -> list[str]:
        out = self._config.getoption("--parity-report")
        if not out:
            return []
        from .report import write_html, write_json

        self._failures += 1
        base = sanitize_nodeid(self._request.node.nodeid)
        if self._failures > 1:
            base += f"-{self._failures}"
        d = Path(out)
        if not d.is_absolute():
            d = Path(str(self._config.rootpath)) / d
        html_path, json_path = d / f"{base}.html", d / f"{base}.json"
        write_html(report, html_path, title=f"layerparity: {self._request.node.nodeid}")
        write_json(report, json_path)
        return [str(html_path), str(json_path)]


class ParityGolden:
    """What the ``parity_golden`` fixture returns: :meth:`check` against a golden trace
    named after the test (``test_port[case1]`` -> ``test_port_case1_.caffe.npz``)."""

    def __init__(self, checker: ParityChecker, request: pytest.FixtureRequest) -> None:
        self._checker = checker
        self.name = sanitize_nodeid(request.node.name)

    @property
    def path(self) -> Path:
        return self._checker.golden_path(self.name)

    def check(self, caffe_model: Any, tf_model: Any, inputs: Any = None, *, basename: str | None = None, **kw: Any) -> Any:
        __tracebackhide__ = True
        return self._checker.check(caffe_model, tf_model, inputs, golden=basename or self.name, **kw)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def parity_models(request: pytest.FixtureRequest) -> Any:
    """The session's open models (a :class:`~layerparity.model_cache.ModelCache`), which
    ``parity.check`` reuses: each (model, weights, options) is opened once per session and
    closed at its end. ``None`` with ``--parity-no-reuse``."""
    if request.config.getoption("--parity-no-reuse"):
        yield None
        return
    from .model_cache import ModelCache

    models = ModelCache()
    yield models
    models.close()


@pytest.fixture
def parity(request: pytest.FixtureRequest, parity_models: Any) -> ParityChecker:
    """Parity checks against real Caffe or a recorded golden trace.

    Example::

        def test_port(parity):
            report = parity.check("deploy.prototxt", "port.keras", x,
                                  caffe_weights="w.caffemodel")
            assert report.row("conv1").metrics.cosine > 0.9999

    On failure: the ``assert_parity`` message (first divergent layer, worst NCHW
    index, tolerance, own vs total error, diagnosis with fix, per-layer table), and
    with ``--parity-report DIR`` an HTML and a JSON report per failing check.
    """
    return ParityChecker(request, parity_models)


@pytest.fixture
def parity_golden(parity: ParityChecker, request: pytest.FixtureRequest) -> ParityGolden:
    """Like ``parity`` with ``golden=<test name>``::

        def test_port(parity_golden):
            parity_golden.check("deploy.prototxt", "port.keras", x, caffe_weights="w.caffemodel")

    ``pytest --parity-regen`` records ``<test dir>/<module>/<test name>.caffe.npz``.
    """
    return ParityGolden(parity, request)


@pytest.fixture
def caffe_net(request: pytest.FixtureRequest) -> Any:
    """Factory ``caffe_net(prototxt, weights=None, **kw) -> CaffeBackend`` (closed after the test).

    The backend can be passed to ``parity.check`` as the Caffe model::

        def test_port(parity, caffe_net, tf_model):
            parity.check(caffe_net("deploy.prototxt", "w.caffemodel"), tf_model("port.keras"), x)
    """
    opened: list[Any] = []

    def load_caffe(prototxt: Any, weights: Any = None, **kw: Any) -> Any:
        from .backends.caffe import CaffeBackend

        kw = dict(kw)
        dirs = [*([kw["pythonpath"]] if isinstance(kw.get("pythonpath"), (str, os.PathLike))
                  else list(kw.get("pythonpath") or [])), *caffe_pythonpath(request.config)]
        if dirs:
            kw["pythonpath"] = dirs
        b = CaffeBackend(prototxt, weights, **kw)
        opened.append(b)
        return b

    yield load_caffe
    for b in reversed(opened):
        b.close()


@pytest.fixture
def tf_model(request: pytest.FixtureRequest) -> Any:
    """Factory ``tf_model(path_or_model, **kw) -> TF backend`` (``load_tf``; closed after the test).
    Keras files load with the objects of ``--parity-keras-module`` plus ``custom_objects=``."""
    opened: list[Any] = []

    def load_tf(model: Any, **kw: Any) -> Any:
        from .backends.tensorflow import load_tf as _load

        kw = dict(_with_custom_objects(request.config, {"tf_options": kw}).get("tf_options") or {})
        b = _load(model, **kw)
        opened.append(b)
        return b

    yield load_tf
    for b in reversed(opened):
        b.close()
