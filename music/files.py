"""File helpers: JSONL reading with precise errors, and atomic writes (nothing half-written)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from music.errors import DataError


def open_text(path: str | Path):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, object) from a .jsonl or .jsonl.gz; errors name file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "-", None, "file does not exist")
    n = 0
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    path, f"line {lineno}", None, f"malformed JSON ({exc.msg} at column {exc.colno})"
                ) from None
            n += 1
            yield lineno, obj
    if n == 0:
        raise DataError(path, "-", None, "file is empty (no records)")


def dumps_canonical(obj: Any) -> str:
    """Deterministic JSON: same object, same bytes on every machine."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _refuse_unsafe_target(target: str | Path) -> Path:
    """`target` as a Path, or a DataError when replacing it could destroy more than itself: an empty name,
    `.` or `..`, the filesystem root, the working directory or any folder that holds it."""
    raw = str(target)
    path = Path(target)
    where = f"atomic_path({raw!r})"
    if not raw.strip() or path.name in ("", ".", ".."):
        raise DataError(where, "-", None, "refusing an empty, '.' or '..' target: it names a folder that holds others")
    here = {Path(os.path.abspath(os.getcwd())), Path(os.path.realpath(os.getcwd()))}
    forms = {Path(os.path.abspath(path))}
    if not path.is_symlink():  # a symlink is replaced, never followed
        forms.add(Path(os.path.realpath(path)))
    for form in forms:
        if form.parent == form or any(form == h or form in h.parents for h in here):
            raise DataError(
                where,
                "-",
                None,
                f"refusing to replace {form}: the filesystem root, the working directory or a folder above it",
            )
    return path


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it into place only if the block succeeds.

    Works for files and directories: on error the temporary is removed and `target` is untouched. Refuses (a
    DataError) a target whose replacement would remove more than itself: an empty name, `.`, `..`, `/`, the
    working directory or a folder above it. Only the temporary folder it made is ever removed on the way out.
    """
    target = _refuse_unsafe_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp = tmp_dir / target.name
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Write records as canonical JSONL atomically; returns the count."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for rec in records:
                fh.write(dumps_canonical(rec) + "\n")
                n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n", encoding="utf-8")
