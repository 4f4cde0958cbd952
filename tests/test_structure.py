"""The shape of the package, read from the source (AST; nothing imported but the public names):
no import cycle, no module importing another's underscore names, every exception class in
errors.py, one export list, and ``import layerparity`` loads neither TensorFlow nor Caffe.

The Caffe worker's own modules (``backends/_caffe_*``) may keep their own exception
classes: the worker runs in a separate interpreter without the package (checked too).
"""

from __future__ import annotations

import ast
import builtins
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import layerparity

PKG = Path(layerparity.__file__).resolve().parent
WORKER_PREFIX = "layerparity.backends._caffe"


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    imports: dict[str, list[int]] = field(default_factory=dict)  # imported module -> line numbers
    underscore: list[str] = field(default_factory=list)  # "target.name (line n)"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = ["layerparity", *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of every node under an ``if TYPE_CHECKING:`` (those imports never run)."""
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for child in n.body:
                skip.update(id(x) for x in ast.walk(child))
    return skip


def _load() -> dict[str, Module]:
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        name = _module_name(path)
        mods[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)),
                            path.name == "__init__.py")
    for m in mods.values():
        skip = _type_checking_nodes(m.tree)
        base_pkg = m.name if m.is_package else m.name.rpartition(".")[0]
        for n in ast.walk(m.tree):
            if id(n) in skip:
                continue
            targets: list[tuple[str, str | None]] = []  # (module, imported attribute)
            if isinstance(n, ast.Import):
                targets = [(a.name, None) for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                if n.level:
                    base = base_pkg
                    for _ in range(n.level - 1):
                        base = base.rpartition(".")[0]
                    frm = base + ("." + n.module if n.module else "")
                else:
                    frm = n.module or ""
                targets = [(frm, a.name) for a in n.names]
            for frm, attr in targets:
                if not frm.startswith("layerparity"):
                    continue
                sub = f"{frm}.{attr}" if attr else None
                target = sub if sub in mods else frm
                # "import layerparity.x.y" also runs the packages above it
                while target not in mods and "." in target:
                    target = target.rpartition(".")[0]
                if target in mods and target != m.name:
                    m.imports.setdefault(target, []).append(n.lineno)
                if attr and attr.startswith("_") and not attr.startswith("__") and target != m.name:
                    m.underscore.append(f"{frm}.{attr} (line {n.lineno})")
    return mods


MODULES = _load()


def _cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in mods[v].imports:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10000))
    try:
        for v in mods:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(old)
    return out


def _edges_within(comp: list[str]) -> list[str]:
    return [f"{a} -> {b} (line {MODULES[a].imports[b][0]})" for a in comp for b in MODULES[a].imports if b in comp]


# -- the facts -------------------------------------------------------------------------------


def test_the_reader_sees_the_whole_package():
    assert {"layerparity", "layerparity.errors", "layerparity.api", "layerparity.backends.caffe"} <= set(MODULES)
    assert len(MODULES) > 40
    # and it sees imports inside functions (cli imports the engine only when a command runs)
    assert "layerparity.backends.caffe" in MODULES["layerparity.cli"].imports or any(
        m.startswith("layerparity.backends") for m in MODULES["layerparity.cli"].imports)


def test_no_import_cycles_inside_the_package():
    """Any import counts, also one inside a function (a cycle "broken" that way is still a
    cycle); only imports under ``if TYPE_CHECKING:`` do not."""
    cycles = _cycles(MODULES)
    assert not cycles, "import cycles:\n" + "\n".join(
        "  " + ", ".join(c) + "\n    " + "\n    ".join(_edges_within(c)) for c in cycles)


def test_the_cycle_check_finds_a_cycle_made_inside_a_function():
    """The checker itself: a function-level import that closes a loop is found."""
    a = Module("x.a", Path("a.py"), ast.parse(""), False, imports={"x.b": [1]})
    b = Module("x.b", Path("b.py"), ast.parse(""), False, imports={"x.a": [7]})
    c = Module("x.c", Path("c.py"), ast.parse(""), False, imports={"x.a": [1]})
    assert _cycles({"x.a": a, "x.b": b, "x.c": c}) == [["x.a", "x.b"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n"
                     "def f():\n    from . import c\n")
    skipped = _type_checking_nodes(tree)
    kept = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in skipped]
    assert [n.names[0].name for n in kept] == ["TYPE_CHECKING", "c"]


def test_no_module_imports_another_modules_underscore_names():
    bad = [f"{m.name} <- {u}" for m in MODULES.values() for u in m.underscore]
    assert not bad, "underscore names imported across modules (make them public or move them):\n  " + "\n  ".join(bad)


def _exception_classes() -> list[tuple[str, str, int]]:
    """(module, class, line) of every class that derives from an exception: builtin
    exceptions, then any class of the package whose base is one (to a fixed point)."""
    known = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
             and issubclass(getattr(builtins, n), BaseException)}
    classes = [(m.name, n) for m in MODULES.values() for n in ast.walk(m.tree) if isinstance(n, ast.ClassDef)]
    found: dict[tuple[str, str], int] = {}
    changed = True
    while changed:
        changed = False
        for mod, cls in classes:
            if (mod, cls.name) in found:
                continue
            bases = [ast.unparse(b) for b in cls.bases]
            if any(b in known or b.rpartition(".")[2] in known for b in bases):
                found[(mod, cls.name)] = cls.lineno
                known.add(cls.name)
                changed = True
    return [(mod, name, line) for (mod, name), line in found.items()]


def test_every_exception_class_lives_in_errors_py():
    excs = _exception_classes()
    assert {"InputError", "InternalError", "CaffeError", "UsageError"} <= {n for m, n, _ in excs if m == "layerparity.errors"}
    outside = [f"{m}.{n} (line {line})" for m, n, line in excs
               if m != "layerparity.errors" and not m.startswith(WORKER_PREFIX)]
    assert not outside, "exception classes outside errors.py:\n  " + "\n  ".join(outside)


def test_the_caffe_worker_modules_import_nothing_else_of_the_package():
    """Why they may keep their own exceptions: the worker runs without layerparity's other modules."""
    worker = [m for m in MODULES.values() if m.name.startswith(WORKER_PREFIX)]
    assert len(worker) >= 3
    bad = [f"{m.name} -> {t}" for m in worker for t in m.imports if not t.startswith(WORKER_PREFIX)
           and t not in ("layerparity", "layerparity.backends")]
    assert not bad, bad


# -- the public surface ------------------------------------------------------------------------


def test_one_export_list_drives_the_lazy_map_the_typing_block_and_api_all():
    from layerparity import _exports, api

    exports = _exports.EXPORTS
    assert list(api.__all__) == list(exports)
    assert set(layerparity.__all__) == set(exports) | {"__version__"}
    # the TYPE_CHECKING block of __init__ names exactly the exported names
    init = MODULES["layerparity"].tree
    block = next(n for n in init.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    typed = {a.asname or a.name for imp in block.body if isinstance(imp, ast.ImportFrom) for a in imp.names}
    assert "*" not in typed
    assert typed == set(exports), (sorted(typed - set(exports)), sorted(set(exports) - typed))
    # every name resolves to the same object from the package, from api and from its module
    # (a name that is also a submodule is test_public_names_are_not_also_submodules' business)
    for name, mod in exports.items():
        if f"layerparity.{name}" in MODULES:
            continue
        obj = getattr(layerparity, name)
        assert getattr(api, name) is obj, name
        assert getattr(__import__(f"layerparity.{mod}", fromlist=[name]), name) is obj, name


def test_public_names_are_not_also_submodules():
    """``layerparity.<name>`` must mean one thing. A public function named like a submodule
    (``align`` and ``align.py``, as it once was) is the function or the module depending on what was
    imported first: once anything imports the submodule, the import system sets the package's
    ``align`` attribute to the module and ``lp.align(...)`` raises "module is not callable"."""
    from layerparity import _exports

    clashes = sorted(n for n in _exports.EXPORTS if f"layerparity.{n}" in MODULES)
    assert not clashes, f"public names that are also submodules of layerparity: {clashes}"


def test_asserts_are_importable_from_the_package():
    from layerparity import assert_blob_close, assert_parity
    from layerparity.testing import assert_blob_close as blob
    from layerparity.testing import assert_parity as parity

    assert assert_parity is parity and assert_blob_close is blob


def test_capture_functions_have_real_signatures():
    import inspect

    from layerparity.backends.caffe import CaffeBackend

    caffe = inspect.signature(layerparity.capture_caffe)
    tf = inspect.signature(layerparity.capture_tf)
    for sig in (caffe, tf):
        assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()), sig
    assert list(caffe.parameters)[:3] == ["prototxt", "weights", "inputs"]
    # every CaffeBackend option is spelled out, with the backend's defaults
    backend = inspect.signature(CaffeBackend.__init__).parameters
    for name in ("batch", "phase", "python", "timeout", "env"):
        assert caffe.parameters[name].default == backend[name].default, name
    assert list(tf.parameters)[:2] == ["model", "inputs"]
    # every load_tf option too (its inputs= feed names are capture_tf's input_names=)
    from layerparity.backends.tensorflow import load_tf

    for name, p in inspect.signature(load_tf).parameters.items():
        if name != "model":
            mine = "input_names" if name == "inputs" else name
            assert tf.parameters[mine].default == p.default, name


@pytest.mark.parametrize("code", [
    "import layerparity; import sys; assert 'tensorflow' not in sys.modules and 'caffe' not in sys.modules",
    # every public name, loaded: still no framework (they are imported when a capture runs)
    "import sys, layerparity as lp; [getattr(lp, n) for n in lp.__all__]; "
    "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'caffe')]; assert not bad, bad",
])
def test_import_layerparity_loads_no_framework(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_test_modules_have_unique_basenames():
    """pytest's default rootdir import mode imports test modules by basename, so two test files of
    one name in package-less folders fail collection (CI saw tests/zoo/test_golden_diagnosis.py
    clash with tests/test_golden_diagnosis.py)."""
    tests = Path(__file__).resolve().parent
    seen: dict[str, list[str]] = {}
    for path in tests.rglob("*.py"):
        if path.name == "conftest.py" or (path.parent / "__init__.py").exists():
            continue  # pytest imports conftest files by path; packages by dotted name
        seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, clashes


# -- the data flow: capture -> align -> compare -> diagnose -> report, no arrow back ----------

#: Leaf modules every stage may use: the data model and small shared helpers.
SHARED = {"errors", "formatting", "atomic_write", "names", "kinds", "layout", "trace", "result", "_exports"}
#: The stages of docs/architecture.md's diagram, by module prefix (a new module of a
#: package joins its package's stage); the longest matching prefix wins.
STAGES = {
    "backends": 0, "inputs": 0, "keras_layers": 0, "caffemodel": 0,  # capture
    "alignment": 1, "weight_pairing": 1, "weights": 1,  # align (weights: pairing and parity of parameters)
    "compare": 2, "sources": 2, "window": 2, "own_error": 2, "detections": 2, "metrics": 2, "_fused": 2, "verdict": 2,  # compare
    "diagnosis": 3,  # diagnose
    "report": 4, "testing": 4, "pytest_plugin": 4, "cli": 4, "sweeper": 4, "model_cache": 4, "api": 4,
    "demo": 4, "": 4,  # report and the surface (the package itself, its verbs, the bundled demo)
}
#: The one import toward a later stage: the engine calls the diagnosis on the rows it
#: decides (the diagram's arrow compare -> diagnose).
FORWARD_CALLS = {("layerparity.compare", "layerparity.diagnosis")}


def _stage(module: str) -> int | None:
    rel = module.removeprefix("layerparity").removeprefix(".")
    if rel in SHARED:
        return None
    best = max((p for p in STAGES if p == "" or rel == p or rel.startswith(p + ".")), key=len)
    return STAGES[best]


def _against_the_flow(mods: dict[str, Module]) -> list[str]:
    back = []
    for m in mods.values():
        s = _stage(m.name)
        for target, lines in m.imports.items():
            t = _stage(target)
            if s is None and t is not None:
                back.append(f"{m.name} (shared) -> {target} (line {lines[0]})")
            elif s is not None and t is not None and t > s:
                root = ".".join(target.split(".")[:2])
                if (m.name, root) not in FORWARD_CALLS:
                    back.append(f"{m.name} (stage {s}) -> {target} (stage {t}, line {lines[0]})")
    return back


def test_imports_follow_the_data_flow_with_no_arrow_back():
    """A module imports modules of its own stage or earlier ones (and the shared leaves); a
    capture module never imports the aligner, the engine never imports a renderer, a shared
    leaf imports only shared leaves. What architecture.md's diagram says."""
    back = _against_the_flow(MODULES)
    assert not back, "imports against the data flow:\n  " + "\n  ".join(back)


def test_the_data_flow_check_sees_an_arrow_back():
    def mod(name, *imports):
        return Module(name, Path("x.py"), ast.parse(""), False, imports={i: [3] for i in imports})

    mods = [mod("layerparity.diagnosis.conv", "layerparity.compare", "layerparity.result"),
            mod("layerparity.trace", "layerparity.metrics", "layerparity.errors"),
            mod("layerparity.backends.keras", "layerparity.alignment", "layerparity.layout"),
            mod("layerparity.compare", "layerparity.diagnosis", "layerparity.diagnosis.conventions",
                "layerparity.backends.caffe"),
            mod("layerparity.metrics", "layerparity.report.text")]
    assert _against_the_flow({m.name: m for m in mods}) == [
        "layerparity.trace (shared) -> layerparity.metrics (line 3)",
        "layerparity.backends.keras (stage 0) -> layerparity.alignment (stage 1, line 3)",
        "layerparity.metrics (stage 2) -> layerparity.report.text (stage 4, line 3)",
    ]  # diagnosis -> compare imports an earlier stage (the cycle test is what forbids that one)
    assert _stage("layerparity.diagnosis.conv") == 3 and _stage("layerparity.backends.keras") == 0
    assert _stage("layerparity.report.sweep") == 4 and _stage("layerparity") == 4 and _stage("layerparity.trace") is None
    assert _stage("layerparity.weights") == 1 and _stage("layerparity.weight_pairing") == 1
    assert _stage("layerparity.sweeper.new_module") == 4  # a new module joins its package's stage


def test_architecture_md_has_one_line_per_module():
    """The module table of docs/architecture.md names every module of the package, one row
    each, by its path under src/layerparity/ (the first cell of the row)."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", doc, re.M)]
    files = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py"))
    assert len(rows) == len(set(rows)), sorted({r for r in rows if rows.count(r) > 1})
    missing = [f for f in files if f not in rows]
    assert not missing, f"modules without a row in docs/architecture.md: {missing}"
