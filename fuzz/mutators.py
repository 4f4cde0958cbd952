"""Structure-aware mutations shared by the atheris targets and the hypothesis smoke tests.

Each mutator takes bytes and a ``random.Random`` and returns new bytes. They know
just enough about the formats (zip-of-.npy archives, prototxt text, protobuf wire
format) to get past the outer checks (zip CRCs, JSON syntax) and reach the code
that interprets the contents. Pure standard library + NumPy.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Callable

# -- values a hostile file likes to put where a well-behaved one has data ------

NASTY_STRINGS = [
    "",
    "../../x",
    "/etc/passwd",
    "..\\..\\x",
    "a\x00b",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "\u202e\u0645\u0631\u062d\u0628\u0627",
    "\U0001f600",
    "x" * 5000,
    "manifest",
    "a0",
    "NCHW",
    "flat:NCHW",
    "flat:NHWC",
    "NHWC",
    "NC",
    "%s%n%x",
    "{}",
]
NASTY_NUMBERS = [0, -1, 1, 2, 3, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64, -(2**63), 10**30, 0.5, -0.0, 1e308,
                 float("inf"), float("-inf"), float("nan")]
NASTY_INTS = [n for n in NASTY_NUMBERS if isinstance(n, int)]
NASTY_VALUES: list = [
    None,
    True,
    [],
    {},
    [None],
    [[1]],
    {"a": {"b": {"c": []}}},
    *NASTY_NUMBERS,
    *NASTY_STRINGS,
    [-1, 3],
    [0, 0, 0, 0],
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
    [2**40],
]


def nasty_value(rng: random.Random) -> object:
    return rng.choice(NASTY_VALUES)


# -- generic byte mutations (used when no libFuzzer mutator is around) --------


def byte_mutate(data: bytes, rng: random.Random, max_size: int = 1 << 20) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:  # flip bits
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # truncate
            del b[rng.randrange(len(b)) :]
        elif op == 2:  # insert random bytes
            i = rng.randint(0, len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3 and b:  # delete a span
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 64)]
        elif op == 4 and b:  # duplicate a span
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.randint(1, 64))
            b[i:i] = b[i:j]
        elif op == 5 and b:  # interesting integers
            i = rng.randrange(len(b))
            b[i : i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00"])
    return bytes(b[:max_size])


# -- archives --------------------------------------------------------------


def read_zip(data: bytes) -> list[tuple[str, bytes]] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return [(i.filename, zf.read(i)) for i in zf.infolist()]
    except Exception:  # noqa: BLE001 - anything unreadable is just "not a zip"
        return None


def write_zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are on purpose
        with zipfile.ZipFile(buf, "w", compression=compression) as zf:
            for name, payload in members:
                zf.writestr(name, payload)
    return buf.getvalue()


def npy_bytes(arr) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=arr.dtype.hasobject if hasattr(arr, "dtype") else False)
    return buf.getvalue()


def manifest_bytes(manifest: object) -> bytes:
    import numpy as np

    raw = json.dumps(manifest, ensure_ascii=False).encode("utf-8")
    return npy_bytes(np.frombuffer(raw, dtype=np.uint8))


def parse_manifest(payload: bytes) -> object | None:
    import numpy as np

    try:
        arr = np.load(io.BytesIO(payload), allow_pickle=False)
        return json.loads(arr.tobytes().decode("utf-8"))
    except Exception:  # noqa: BLE001
        return None


def _json_paths(x: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(x, dict):
        for k, v in x.items():
            out += _json_paths(v, prefix + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += _json_paths(v, prefix + (i,))
    return out


def _get(x: object, path: tuple) -> object:
    for k in path:
        x = x[k]  # type: ignore[index]
    return x


def mutate_json(doc: object, rng: random.Random) -> object:
    """One structural edit of a JSON document: replace, delete, duplicate or add a node."""
    doc = json.loads(json.dumps(doc))
    paths = _json_paths(doc)
    path = rng.choice(paths)
    op = rng.randrange(6)
    if not path:
        return nasty_value(rng) if op == 0 else doc
    parent = _get(doc, path[:-1])
    key = path[-1]
    if op in (0, 1):  # replace with a nasty value
        parent[key] = nasty_value(rng)
    elif op == 2:  # delete
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif op == 3:  # duplicate a list element / copy a sibling value
        if isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))
        else:
            other = rng.choice(list(parent))
            parent[key] = json.loads(json.dumps(parent[other]))
    elif op == 4:  # add an unknown field
        node = _get(doc, path)
        if isinstance(node, dict):
            node[rng.choice(NASTY_STRINGS) or "extra"] = nasty_value(rng)
        elif isinstance(node, list):
            node.append(nasty_value(rng))
    else:  # numeric nudge
        v = parent[key]
        if isinstance(v, bool):
            parent[key] = not v
        elif isinstance(v, int):
            parent[key] = v + rng.choice([-1, 1, 2**31, -(2**31)])
        elif isinstance(v, list) and v and all(isinstance(i, int) for i in v):
            j = rng.randrange(len(v))
            v[j] = rng.choice(NASTY_NUMBERS)
    return doc


def _hostile_npy(rng: random.Random) -> bytes:
    """A member that is a valid-looking .npy with a hostile header or dtype."""
    import numpy as np

    choice = rng.randrange(5)
    if choice == 0:  # object array: needs pickle to load
        return npy_bytes(np.array([{"x": 1}, None], dtype=object))
    if choice == 1:  # header claims a huge shape, data is tiny
        n = rng.choice([2**31, 2**40, 10**6])
        hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + str(n) + ",), }"
    elif choice == 2:  # structured dtype
        hdr = "{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (1,), }"
    elif choice == 3:  # not a dict literal
        hdr = "__import__('os').system('true')"
    else:  # negative shape
        hdr = "{'descr': '<f4', 'fortran_order': True, 'shape': (-1, 3), }"
    hdr = hdr.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + b"\x00" * 16


def mutate_archive(data: bytes, rng: random.Random, byte_mutator: Callable[[bytes], bytes] | None = None) -> bytes:
    """Mutate a trace archive so that it usually stays a readable zip."""
    members = read_zip(data)
    if members is None or rng.random() < 0.05:
        return byte_mutator(data) if byte_mutator else byte_mutate(data, rng)
    names = [n for n, _ in members]
    op = rng.randrange(10)
    if op <= 4 and "manifest.npy" in names:  # edit the manifest's JSON
        i = names.index("manifest.npy")
        doc = parse_manifest(members[i][1])
        if doc is not None:
            for _ in range(rng.randint(1, 3)):
                doc = mutate_json(doc, rng)
            members[i] = ("manifest.npy", manifest_bytes(doc))
        else:
            members[i] = ("manifest.npy", (byte_mutator or (lambda d: byte_mutate(d, rng)))(members[i][1]))
    elif op == 5 and members:  # mutate one member's bytes (header or data)
        i = rng.randrange(len(members))
        name, payload = members[i]
        members[i] = (name, (byte_mutator or (lambda d: byte_mutate(d, rng)))(payload))
    elif op == 6 and members:  # replace a member by a hostile .npy
        i = rng.randrange(len(members))
        members[i] = (members[i][0], _hostile_npy(rng))
    elif op == 7 and members:  # drop, duplicate or rename a member
        i = rng.randrange(len(members))
        how = rng.randrange(3)
        if how == 0:
            members.pop(i)
        elif how == 1:
            members.append(members[i])
        else:
            members[i] = (rng.choice(["../../evil.npy", "/tmp/abs.npy", "a0.npy", "manifest", "x"]), members[i][1])
    elif op == 8:  # recompress (deflate / bzip2 / lzma) the same members
        return write_zip(members, rng.choice([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    else:  # swap two members' payloads (manifest now points at the wrong arrays)
        if len(members) >= 2:
            i, j = rng.sample(range(len(members)), 2)
            members[i], members[j] = (members[i][0], members[j][1]), (members[j][0], members[i][1])
    return write_zip(members)


# -- prototxt ------------------------------------------------------------------

PROTOTXT_TOKENS = [
    "layer {", "}", "{", 'name: "x"', 'type: "Convolution"', 'type: "Pooling"', 'type: "ReLU"',
    'type: "NoSuchLayer"', 'type: "Python"', 'type: "Input"', 'type: "Concat"', 'type: "InnerProduct"',
    'type: "Eltwise"', 'type: "Split"', 'type: "Softmax"', 'type: "Reshape"', 'type: "Flatten"',
    'bottom: "data"', 'top: "data"', 'bottom: "x"', 'top: "x"', 'bottom: "missing"',
    "convolution_param {", "pooling_param {", "inner_product_param {", "input_param {",
    "shape { dim: 1 dim: 3 dim: 8 dim: 8 }", "shape { dim: -1 }", "shape { dim: 0 }",
    "shape { dim: 2147483647 dim: 2147483647 }", "num_output: 0", "num_output: -1",
    "num_output: 4294967295", "kernel_size: 0", "kernel_size: 99999", "stride: 0", "pad: -5",
    "group: 0", "group: 7", "dilation: 0", "pool: MAX", "pool: STOCHASTIC", "global_pooling: true",
    "axis: 99", "axis: -99", 'input: "data"', "input_dim: 1", "input_dim: 0", "input_dim: -3",
    "python_param { module: \"os\" layer: \"system\" }", "include { phase: TRAIN }",
    "engine: CUDNN", '"\\x00"', "#", "\n", "::", "name: \"" + "y" * 300 + "\"",
]


def mutate_prototxt(data: bytes, rng: random.Random) -> bytes:
    """Token-level edits of prototxt text: insert, delete, swap or duplicate lines/tokens."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return byte_mutate(data, rng)
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        i = rng.randrange(len(lines)) if lines else 0
        if op == 0:
            lines.insert(i, rng.choice(PROTOTXT_TOKENS))
        elif op == 1 and lines:
            lines.pop(i)
        elif op == 2 and len(lines) > 1:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3 and lines:
            j = min(len(lines), i + rng.randint(1, 30))
            lines[j:j] = lines[i:j]  # duplicate a block (e.g. a whole layer: duplicate names/tops)
        elif op == 4 and lines:  # replace a quoted name with another existing one (cycles, clashes)
            import re

            quoted = re.findall(r'"[^"\n]*"', text)
            if quoted:
                new = rng.choice(quoted)
                lines[i] = re.sub(r'"[^"\n]*"', lambda _m, new=new: new, lines[i], count=1)
        elif op == 5 and lines:  # replace a number
            import re

            num = str(rng.choice(NASTY_NUMBERS))
            lines[i] = re.sub(r"-?\d+", lambda _m, num=num: num, lines[i], count=1)
        else:
            return byte_mutate("\n".join(lines).encode(), rng)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


# -- protobuf wire format (caffemodel) ----------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def mutate_protobuf(data: bytes, rng: random.Random) -> bytes:
    """Edits that keep protobuf framing plausible: append/replace fields, fiddle lengths."""
    op = rng.randrange(5)
    b = bytearray(data)
    if op == 0:  # append a random field (tag, wire type) with a payload
        field = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 100, 2**28])
        wt = rng.choice([0, 1, 2, 5])
        tag = _varint((field << 3) | wt)
        if wt == 0:
            payload = _varint(rng.choice(NASTY_INTS) if rng.random() < 0.5 else rng.randrange(1 << 20))
        elif wt == 1:
            payload = bytes(rng.randrange(256) for _ in range(8))
        elif wt == 5:
            payload = bytes(rng.randrange(256) for _ in range(4))
        else:
            inner = bytes(rng.randrange(256) for _ in range(rng.randint(0, 32)))
            length = len(inner) if rng.random() < 0.8 else rng.choice([2**31, 2**32 - 1, len(inner) + 100])
            payload = _varint(length) + inner
        pos = rng.randint(0, len(b))
        b[pos:pos] = tag + payload
        return bytes(b)
    if op == 1 and b:  # truncate
        return bytes(b[: rng.randrange(len(b))])
    if op == 2 and len(b) > 8:  # copy a span elsewhere (duplicated layers / blobs)
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 256))
        k = rng.randrange(len(b))
        b[k:k] = b[i:j]
        return bytes(b)
    return byte_mutate(data, rng)


def guarded(mutator: Callable[[bytes, random.Random], bytes], fallback: Callable[[bytes], bytes]):
    """An atheris custom mutator that never raises: a mutator bug is ours, not a finding."""

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        try:
            out = mutator(data, random.Random(seed))
        except Exception:  # noqa: BLE001
            out = fallback(data)
        return out[:max_size] if len(out) > max_size else out

    return custom_mutator
