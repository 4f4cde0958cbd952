"""The docs harness: every fenced Python and shell example in README.md and docs/*.md runs,
and where the page shows output, the output of the run is compared with it.

Built on Sybil (its Markdown fence lexer, ``Document`` and ``Example``); one parser reads
every fenced block of a page and decides from the block's language and from a
``<!-- docs-test: ... -->`` HTML comment right before the fence what to do with it:

============================  ============================================================
block                         what the harness does
============================  ============================================================
```` ```python ````           exec'd in the page's namespace (shared by the page's blocks,
                              in page order), cwd = the workspace; its stdout (or, with
                              ``raises``, the exception's message) is the block's output
```` ```console ````          ``$ command`` lines (``\\`` continues a line) run in bash in
                              the workspace (shell variables carry over between blocks of
                              a page); the lines under a command are its expected output
```` ```bash ```` / ``sh``    the whole block runs as a bash script; nothing compared
``<!-- docs-test: setup CODE -->``  Python run before the next block, binding its placeholders
                              (``proto``, ``model``, ``x``) to the demo's files
``# path/file.py`` first line  a Python block that shows a file is also written to the
                              workspace under that path (``, continued``: appended)
``print(x)  # shown``           a comment after a ``print`` (its value before a ``: note``),
                              or comment lines right under a statement that prints, are
                              that statement's expected output (statements run one by one)
``<!-- docs-test: output -->``  the next block is the expected output of the previous
                              example (stdout and stderr together for shell commands)
``<!-- docs-test: raises E -->``  the next Python block must raise ``E``
``<!-- docs-test: exit N -->``  the next shell block's commands may exit with status N
                              (else 0 or 1: 1 is "the models differ", the demo's outcome)
``<!-- docs-test: skip REASON -->``  not run here (another Caffe install, a GPU, the user's
                              own file, the suite itself); the page must say so visibly:
                              the text right above the comment holds "Not run by the docs
                              test"
``<!-- docs-test: not an example -->``  a signature or a sketch, not meant to run
``<!-- docs-test: varies R N...: WHY -->``  (may be added to any of the above) the shown numbers
                              N... of the next block are compared to relative tolerance R
                              instead of 1e-3, or within a factor with ``varies 3x``: a value
                              that differs from CPU to CPU beyond float rounding (each N
                              must be shown in the block; WHY is required)
============================  ============================================================

An unlabelled block whose first line is a command (``$ ...`` as ``console``; ``layerparity ...``,
``make ...``, ``pip ...``, ``pytest ...``, ``python -m ...`` as a script) runs like a labelled
one, so a shell example cannot slip by unlabelled; other unlabelled blocks are text (tables,
messages, diagrams) and never run unless marked ``output``.

Expected output is compared after normalising whitespace (runs of blanks are one blank,
blank lines and trailing blanks are ignored). ``...`` alone on a line matches any lines;
``...`` inside a line matches any text. Integers must be equal; a number with a decimal
point or an exponent matches when the run's value agrees with it to 1 part in 1000, or
rounds to it at the digits shown, so float rounding (a different BLAS kernel, oneDNN on or
off) does not fail a page, and a stale number does. A value that is ill-conditioned (the
demo's max rel error divides by a Caffe output of ~1e-4 that is a sum of terms ~16 in
magnitude: OpenBLAS's CPU-specific sgemm kernels give 9151.98 to 9202.51) is listed in a
``varies`` directive with its measured reason and compared at the tolerance stated there;
a number changed by more (9202.51 -> 9302.51) still fails. Float noise (a correct layer's
max abs error, 9.54e-07 or 1.19e-06 by BLAS kernel) is listed with a factor (``varies 3x``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import re
import shlex
import subprocess
import sys
import tokenize
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document, Example, Region
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<body>(?:(?!-->).)*?)\s*-->\s*$", re.S)  # the last comment
VARIES = re.compile(r"varies\s+(?P<rtol>\S+)\s+(?P<numbers>[^:]*?)\s*:\s*(?P<reason>.*)", re.S)
DEFAULT_RTOL = 1e-3
VISIBLE_NOTE = "Not run by the docs test"
SHELL_LANGS = {"bash", "sh", "shell"}
COMMAND_WORDS = ("$ ", "layerparity ", "make ", "pip ", "pytest ", "python -m ", ".venv/bin/")
COLUMNS = "120"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# -- parsing ---------------------------------------------------------------------------------


@dataclass
class Block:
    kind: str  # python | console | script | output | skip | text | error
    source: str
    line: int
    language: str
    directive: str = ""
    reason: str = ""
    raises: str = ""
    exits: tuple[int, ...] = (0, 1)
    setup: str = ""  # Python run first: binds an example's placeholders (``proto``, ``x``) to the demo
    varies: dict[str, float] = field(default_factory=dict)  # shown number -> its stated rtol


@dataclass
class PageState:
    """What one page's run carries from block to block."""

    workspace: Path
    last_output: str | None = None
    last_line: int = 0
    shell_state: Path | None = None
    last_rc: int = 0  # the last shell command's status: `$?` in the next one
    counts: dict[str, int] = field(default_factory=lambda: {"run": 0, "compared": 0, "skipped": 0})
    skipped: list[str] = field(default_factory=list)


class DocsParser:
    """A Sybil parser yielding one region per fenced block of a page."""

    lexer = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<info>[^\n]*)\n"))

    def __call__(self, document: Document) -> Iterable[Region]:
        previous_end = 0
        for lexed in self.lexer(document):
            info = lexed.lexemes["info"].strip()
            language = info.split()[0].lower() if info else ""
            source = str(lexed.lexemes["source"])
            line = document.text.count("\n", 0, lexed.start) + 1
            between_start, previous_end = previous_end, lexed.end
            between = document.text[between_start:lexed.start]
            directives, start = trailing_directives(between)
            varies = [d for d in directives if d.split(None, 1)[0] == "varies"]
            others = [d for d in directives if d not in varies]
            directive = others[-1] if others else ""
            try:
                if len(others) > 1:
                    raise ValueError(f"{document.path}:{line}: more than one docs-test directive before a block "
                                     f"({others!r}); only 'varies' ones can be added")
                block = classify(language, source, line, directive, document.text[: between_start + start],
                                 document.path)
                block.varies = parse_varies(varies, source, f"{document.path}:{line}")
            except ValueError as e:  # a malformed directive or an unlabelled command: the page fails
                block = Block("error", source, line, language, directive, reason=str(e))
            yield Region(lexed.start, lexed.end, block, evaluate)


def trailing_directives(between: str) -> tuple[list[str], int]:
    """The ``<!-- docs-test: ... -->`` comments right before a fence (only blanks between
    them), in page order, and where the first of them starts in ``between``."""
    found, end = [], len(between)
    while (m := DIRECTIVE.search(between[:end])) is not None:
        found.insert(0, m.group("body"))
        end = m.start()
    return found, end


def parse_varies(directives: list[str], source: str, where: str) -> dict[str, float]:
    """``varies RTOL N1 N2 ...: REASON``: the shown numbers N1, N2 ... of the next block are
    compared with relative tolerance RTOL (< 1) instead of 1 part in 1000 (a value that
    really differs from CPU to CPU in its last digits); ``varies Fx ...`` (F > 1) lets them be
    off by up to a factor F, same sign (float noise: the error between two correct float32
    computations, whose size, not value, is the point). Each number must be shown in the
    block, and the reason must be given, so the widening cannot outlive the numbers it was
    stated for. Returns number -> RTOL, or -> F for a factor."""
    out: dict[str, float] = {}
    for d in directives:
        m = VARIES.fullmatch(d)
        if m is None or not m.group("reason").strip() or not m.group("numbers").split():
            raise ValueError(f"{where}: 'docs-test: varies' needs 'varies RTOL NUMBER...: REASON', got {d!r}")
        text = m.group("rtol")
        try:
            rtol = float(text[:-1] if text.endswith("x") else text)
        except ValueError:
            raise ValueError(f"{where}: 'docs-test: varies': {text!r} is not a tolerance") from None
        if not (1 < rtol <= 100 if text.endswith("x") else 0 < rtol < 1):
            raise ValueError(f"{where}: 'docs-test: varies {text}': a relative tolerance must be in (0, 1), "
                             f"a factor ('3x') in (1, 100]")
        shown = {t.group("num") for t in _TOKEN.finditer(source) if t.group("num")}
        for n in m.group("numbers").split():
            if n not in shown:
                raise ValueError(f"{where}: 'docs-test: varies' names {n}, which the block does not show "
                                 f"(a number changed without its directive?)")
            out[n] = rtol
    return out


def classify(language: str, source: str, line: int, directive: str, before: str, path: str) -> Block:
    where = f"{path}:{line}"
    word, rest = (directive.split(None, 1) + ["", ""])[:2] if directive else ("", "")
    if directive.startswith("not an example"):
        return Block("text", source, line, language, directive)
    if word == "skip":
        if not rest.strip():
            raise ValueError(f"{where}: 'docs-test: skip' needs a reason")
        tail = before[-500:]  # the note may sit above the previous block ("this and the next block")
        if VISIBLE_NOTE.lower() not in tail.lower():
            raise ValueError(f"{where}: a skipped example needs a visible note above it ({VISIBLE_NOTE!r} ...)")
        return Block("skip", source, line, language, directive, reason=rest.strip())
    if word == "output":
        return Block("output", source, line, language, directive)
    if language == "python":
        setup = rest if word == "setup" else ""
        return Block("python", source, line, language, directive, raises=rest.strip() if word == "raises" else "",
                     setup=setup)
    if language in SHELL_LANGS or language == "console":
        exits = (0, 1)
        if word == "exit":
            exits = tuple(int(v) for v in rest.replace(",", " ").split())
        return Block("console" if language == "console" else "script", source, line, language, directive,
                     exits=exits)
    first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    if language == "" and first.startswith(COMMAND_WORDS):  # an unlabelled shell example runs too
        exits = tuple(int(v) for v in rest.replace(",", " ").split()) if word == "exit" else (0, 1)
        return Block("console" if first.startswith("$ ") else "script", source, line, language, directive,
                     exits=exits)
    if directive:
        raise ValueError(f"{where}: unknown docs-test directive {directive!r} for a {language or 'plain'} block")
    if language == "text" and first.startswith(COMMAND_WORDS):
        raise ValueError(f"{where}: a ```text block that looks like a shell example: label it console/bash, "
                         f"or mark it <!-- docs-test: skip REASON --> with a visible note")
    return Block("text", source, line, language, directive)


# -- running ----------------------------------------------------------------------------------


def evaluate(example: Example) -> str | None:
    block: Block = example.parsed
    state: PageState = example.namespace["__docs_state__"]
    where = f"{Path(example.path).name}:{block.line}"
    if block.kind == "text":
        return None
    if block.kind == "error":
        return block.reason
    if block.kind == "skip":
        state.counts["skipped"] += 1
        state.skipped.append(f"{where}: {block.reason}")
        return None
    if block.kind == "output":
        if state.last_output is None:
            return f"{where}: an output block with no example run before it"
        state.counts["compared"] += 1
        problem = compare_output(block.source, state.last_output, block.varies)
        state.last_output = None
        if problem:
            return f"{where}: the output shown differs from the run of the example at line {state.last_line}:\n{problem}"
        return None
    state.counts["run"] += 1
    state.last_line = block.line
    if block.kind == "python":
        return run_python(example, block, state, where)
    return run_shell(block, state, where)


FILE_HEADER = re.compile(r"#\s*(?P<path>[\w./-]+\.py)\b(?P<rest>[^\n]*)\n")


def _explanation_cut(comment: str) -> str | None:
    """``conv1 conv1: ReLU ran in place`` -> ``conv1 conv1``: the value before a note (``: ``,
    `` <- ``, two blanks) outside brackets and quotes; None when there is no such note."""
    depth, quote = 0, ""
    for k, ch in enumerate(comment):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and k and (comment.startswith(": ", k) or comment.startswith(" <- ", k)
                                   or comment.startswith("  ", k)):
            return comment[:k]
    return None


def comment_expectations(source: str, tree: ast.Module) -> dict[int, list[tuple[list[str], bool]]]:
    """Output shown in comments, by top-level statement index: ``print(x)  # shown`` (the
    comment, or its value before a note) with the comment-only lines under it (a wrapped
    value, or a note: optional), and comment lines right under a statement that prints
    (``for ...: print(...)`` then ``# line 1``, ``# line 2``)."""
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.line[: tok.start[1]].strip():
            trailing[tok.start[0]] = tok.string[1:].strip()

    def alternatives(comment: str) -> list[str]:
        cut = _explanation_cut(comment)
        return [comment, cut] if cut else [comment]

    def comment_lines_after(ln: int, stop: int) -> list[str]:
        got = []
        for k in range(ln + 1, stop):
            text = lines[k - 1].strip()
            if not text.startswith("#"):
                break
            got.append(text[1:].strip())
        return got

    out: dict[int, list[tuple[list[str], bool]]] = {}
    body = tree.body
    for i, stmt in enumerate(body):
        a, b = stmt.lineno, stmt.end_lineno or stmt.lineno
        nxt = body[i + 1].lineno if i + 1 < len(body) else len(lines) + 1
        after = comment_lines_after(b, nxt)
        prints = [ln for ln in range(a, b + 1) if "print(" in lines[ln - 1].split("#")[0]]
        if not prints or not (after or any(ln in trailing for ln in prints)):
            continue
        # try: print(a)  # shown / except ...: print(e)  # shown: one of the two runs
        other_outcome = set()
        for node in ast.walk(stmt):
            if isinstance(node, ast.Try) and any(a <= ln <= b for ln in prints for a, b in
                                                 [(node.body[0].lineno, node.body[-1].end_lineno or 0)]):
                for h in node.handlers:
                    other_outcome.update(range(h.lineno, (h.end_lineno or h.lineno) + 1))
        items: list[tuple[list[str], bool]] = []
        for ln in prints:
            if ln in trailing:
                items.append((alternatives(trailing[ln]), ln in other_outcome))
                items += [(alternatives(c), True) for c in comment_lines_after(ln, b + 1)]
            elif ln != prints[-1] or not after:
                items.append((["..."], False))
        items += [(alternatives(c), False) for c in after]
        out[i] = items
    return out


def run_python(example: Example, block: Block, state: PageState, where: str) -> str | None:
    header = FILE_HEADER.match(block.source)
    if header:  # "# tests/test_port.py": the page shows a file; write it (", continued": append)
        target = state.workspace / header.group("path")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a" if "continued" in header.group("rest") else "w", encoding="utf-8") as fh:
            fh.write(block.source)
    tree = ast.parse(block.source, example.path)
    shown = comment_expectations(block.source, tree)
    ast.increment_lineno(tree, block.line)  # tracebacks name the page's lines
    out = io.StringIO()
    old = os.getcwd()
    os.chdir(state.workspace)
    problems = []
    try:
        if block.setup:
            exec(compile(block.setup, f"{example.path}:{block.line} (docs-test setup)", "exec"), example.namespace)
        for i, stmt in enumerate(tree.body):  # one statement at a time: its output is its own
            part = io.StringIO()
            with contextlib.redirect_stdout(part):
                try:
                    exec(compile(ast.Module([stmt], type_ignores=[]), example.path, "exec"), example.namespace)
                finally:
                    out.write(part.getvalue())
            if i in shown:
                state.counts["compared"] += 1
                problem = compare_output(shown[i], part.getvalue(), block.varies)
                if problem:
                    problems.append(f"{Path(example.path).name}:{stmt.lineno}: the output shown in "
                                    f"the comments differs from the run:\n{problem}")
    except BaseException as e:  # noqa: BLE001 - an example may raise anything; the page decides
        if block.raises and type(e).__name__ == block.raises:
            state.last_output = out.getvalue() + f"{type(e).__name__}: {e}\n"
            return "\n".join(problems) or None
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
        return f"{where}: the example raised\n{tb}\nstdout:\n{out.getvalue()[-3000:]}"
    finally:
        os.chdir(old)
    if block.raises:
        return f"{where}: the example should raise {block.raises} (the page says so) but did not"
    state.last_output = out.getvalue()
    return "\n".join(problems) or None


def shell_commands(source: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("$ "):
            cmd = [ln[2:]]
            while cmd[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd.append(lines[i])
            pairs.append(("\n".join(cmd), []))
        elif pairs:
            pairs[-1][1].append(ln)
        elif ln.strip():
            raise ValueError(f"console block: output before the first $ command: {ln!r}")
        i += 1
    return [(c, "\n".join(o)) for c, o in pairs]


def shell_env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "COLUMNS": COLUMNS,
            "TERM": "dumb", "NO_COLOR": "1"}


def run_bash(script: str, state: PageState, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash in the workspace; variables set by earlier blocks carry over."""
    if state.shell_state is None:
        state.shell_state = state.workspace / f".shell-state-{os.getpid()}-{id(state)}"
        state.shell_state.write_text("", encoding="utf-8")
    st = shlex.quote(str(state.shell_state))
    wrapped = f"set -a; source {st}; (exit {state.last_rc})\n{script}\n__rc=$?; set +a; declare -p | grep -E '^declare -x [A-Za-z_]' " \
              f"| grep -vE ' (PWD|OLDPWD|SHLVL|_)=' > {st}; exit $__rc\n"
    return subprocess.run(["bash", "-c", wrapped], cwd=state.workspace, capture_output=True, text=True,
                          env=shell_env(), timeout=timeout)


def run_shell(block: Block, state: PageState, where: str) -> str | None:
    if block.kind == "script":
        r = run_bash(block.source, state)
        if r.returncode not in block.exits:
            return f"{where}: the script exited {r.returncode}\n{(r.stdout + r.stderr)[-3000:]}"
        state.last_output = r.stdout + r.stderr
        return None
    try:
        pairs = shell_commands(block.source)
    except ValueError as e:
        return f"{where}: {e}"
    for cmd, expected in pairs:
        r = run_bash(cmd, state)
        state.last_rc = r.returncode
        got = r.stdout + r.stderr
        if r.returncode not in block.exits:
            return f"{where}: `{cmd}` exited {r.returncode} (the page allows {block.exits})\n{got[-3000:]}"
        if expected.strip():
            state.counts["compared"] += 1
            problem = compare_output(expected, got, block.varies)
            if problem:
                return f"{where}: the output shown under `{cmd}` differs from the run:\n{problem}"
        state.last_output = got
    return None


# -- comparing output -------------------------------------------------------------------------

NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_TOKEN = re.compile(rf"(?P<ell>\.\.\.)|(?P<num>(?<![A-Za-z_0-9.]){NUMBER}(?!\.?[0-9]))")  # not in 1.0.0


def normalise(text: str) -> list[str]:
    return [re.sub(r"[ \t]+", " ", ln).strip() for ln in text.splitlines() if ln.strip()]


def _line_pattern(line: str) -> tuple[str, list[str]]:
    parts, numbers, pos = [], [], 0
    for m in _TOKEN.finditer(line):
        parts.append(re.escape(line[pos:m.start()]))
        if m.group("ell"):
            parts.append(".*?")
        else:
            parts.append(rf"(?<![A-Za-z_0-9.])({NUMBER})(?!\.?[0-9])")
            numbers.append(m.group("num"))
        pos = m.end()
    parts.append(re.escape(line[pos:]))
    return "".join(parts), numbers


def numbers_agree(shown: str, got: str, rtol: float = DEFAULT_RTOL) -> bool:
    if not re.search(r"[.eE]", shown):
        return not re.search(r"[.eE]", got) and int(shown) == int(got)
    e, a = float(shown), float(got)
    if rtol > 1:  # a factor: same sign, within rtol times either way
        return (e == a == 0) or (e * a > 0 and abs(e) / rtol <= abs(a) <= abs(e) * rtol)
    mantissa = re.split(r"[eE]", shown)[0]
    exponent = int(re.split(r"[eE]", shown)[1]) if re.search(r"[eE]", shown) else 0
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    last_digit = 10.0 ** (exponent - decimals)
    return math.isclose(a, e, rel_tol=rtol) or abs(a - e) <= 0.5 * last_digit * (1 + 1e-9)


def line_matches(shown: str, got: str, varies: dict[str, float] | None = None) -> str | None:
    """None when ``got`` matches the shown line, else why not."""
    pattern, numbers = _line_pattern(shown)
    m = re.fullmatch(pattern, got)
    if m is None:
        return "text differs"
    for i, n in enumerate(numbers):
        rtol = (varies or {}).get(n, DEFAULT_RTOL)
        if not numbers_agree(n, m.group(i + 1), rtol):
            stated = ("" if rtol == DEFAULT_RTOL else f" (beyond its stated factor {rtol:g}x)" if rtol > 1
                      else f" (beyond its stated rtol {rtol:g})")
            return f"number {n} shown, {m.group(i + 1)} in the run{stated}"
    return None


def _any_line_matches(alternatives: list[str], got: str, varies: dict[str, float] | None = None) -> str | None:
    whys = [line_matches(alt, got, varies) for alt in alternatives]
    if None in whys:
        return None
    return next((w for w in whys if w and w.startswith("number")), whys[0])  # the closest reason


def compare_output(expected: str | list[tuple[list[str], bool]], actual: str,
                   varies: dict[str, float] | None = None) -> str | None:
    """None when ``actual`` matches ``expected`` (see the module docstring), else a report.

    ``expected`` is the text shown, or (output shown in comments) its lines as
    ``(alternatives, optional)``: a line may match by any alternative, and, as comments wrap,
    by joining the lines after it (``optional`` lines, notes under a print, may also be left out).
    """
    comments = not isinstance(expected, str)
    if isinstance(expected, str):
        exp = [([ln], False) for ln in normalise(expected)]
    else:
        exp = [(alts, opt) for alts, opt in (([a for alt in alts for a in normalise(alt)], opt)
                                             for alts, opt in expected) if alts]
    act = normalise(actual)
    memo: dict[tuple[int, int], bool] = {}
    worst: list[tuple[int, int, str]] = []

    def match(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        memo[key] = False
        if i == len(exp):
            ok = j == len(act)
            if not ok:
                worst.append((i, j, "the run printed more lines"))
        elif exp[i][0] == ["..."]:
            ok = any(match(i + 1, k) for k in range(j, len(act) + 1))
        else:
            ok = bool(exp[i][1]) and match(i + 1, j)
            if not ok and j < len(act):
                why = _any_line_matches(exp[i][0], act[j], varies)
                ok = why is None and match(i + 1, j + 1)
                joined = exp[i][0][0]
                for k in range(i + 1, min(len(exp), i + 8)) if comments and why is not None else ():
                    if exp[k][0] == ["..."]:
                        break
                    joined += " " + exp[k][0][0]
                    if line_matches(joined, act[j], varies) is None and match(k + 1, j + 1):
                        ok = True
                        break
                if why is not None:
                    worst.append((i, j, why))
            elif not ok:
                worst.append((i, j, "the run printed fewer lines"))
        memo[key] = ok
        return ok

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    if match(0, 0):
        return None
    i, j, why = max(worst, key=lambda t: (t[0], -t[1])) if worst else (0, 0, "")
    shown = " | ".join(exp[i][0]) if i < len(exp) else "<end>"
    got = act[j] if j < len(act) else "<end>"
    return (f"first mismatch at shown line {i + 1}: {why}\n  shown: {shown}\n  run:   {got}\n"
            f"--- the run's whole output ---\n" + "\n".join(act)[-4000:])


# -- a page -----------------------------------------------------------------------------------


def parse(path: Path) -> Document:
    return Document.parse(str(path), DocsParser())


def run_page(path: Path, workspace: Path) -> tuple[PageState, list[str]]:
    """Run every example of one page in order; returns the state and the failures."""
    document = parse(path)
    state = PageState(workspace=workspace)
    document.namespace["__docs_state__"] = state
    document.namespace["__name__"] = "__docs__"
    failures = []
    for example in document.examples():
        try:
            result = example.region.evaluator(example)
        except Exception as e:  # noqa: BLE001 - the harness itself broke on this block
            result = f"{path.name}:{example.line}: {type(e).__name__}: {e}"
        if result:
            failures.append(result)
    return state, failures


def main(argv: list[str]) -> int:
    """``python tests/docs_harness.py WORKSPACE PAGE...``: run the pages in this fresh process
    (as a new user would: nothing registered, nothing imported), print one JSON line per page."""
    import json

    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import caffe  # noqa: F401 - Caffe before TensorFlow in any process

    workspace = Path(argv[0])
    for page in argv[1:]:
        state, failures = run_page(Path(page), workspace)
        print("DOCS-RESULT " + json.dumps({"page": page, "counts": state.counts, "skipped": state.skipped,
                                            "failures": failures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
