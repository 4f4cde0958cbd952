"""Write a file so that readers see the old one or the whole new one, never half of it.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "out", "report.json")
>>> write_text(path, "{}\\n")
>>> open(path).read()
'{}\\n'
>>> with atomic_path(path) as tmp:          # any writer: zipfile, np.save, ...
...     with open(tmp, "w") as f:
...         _ = f.write("[]\\n")
>>> open(path).read(), sorted(os.listdir(os.path.dirname(path)))
('[]\\n', ['report.json'])
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["atomic_path", "write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, make_dirs: bool = True) -> Iterator[str]:
    """A temporary path next to ``path`` (same folder, so the final rename is atomic):
    renamed over ``path`` when the block ends normally, removed when it raises.
    ``make_dirs`` creates the missing folders of ``path`` first."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if make_dirs and folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.partial"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str, *, make_dirs: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, make_dirs=make_dirs) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
