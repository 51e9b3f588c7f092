"""File helpers: JSON/JSONL reading with file:line errors, atomic writes, and reading back a
JSONL file that a run appends to."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from apr.errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Write to a temporary file beside `path`, then rename it over `path`.

    A crash or an exception mid-write leaves `path` as it was (or absent): never half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode open() would give
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def parse_json(text: str | bytes, path: str, line: int):
    """One JSON document, or a UserError naming the file and line: bad UTF-8, bad syntax,
    nesting too deep for the parser, or a number too long to convert."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text.rstrip("\r\n"))  # an error at the end is on this line, not the next
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text (byte {e.start})", path, line) from None
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg}", path, line + e.lineno - 1) from None
    except RecursionError:
        raise UserError("JSON nested too deeply", path, line) from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise UserError(f"invalid JSON: {str(e).splitlines()[0]}", path, line) from None


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) from a JSONL file or a JSON list, streaming JSONL.

    A JSON list is recognised by its first non-blank character `[`; its records are all
    numbered line 1 unless they sit one per line. Errors name the file and line.
    """
    path = Path(path)
    if not path.exists():
        raise UserError("no such file", str(path))
    if path.is_dir():
        raise UserError("is a directory, expected a JSON or JSONL file", str(path))
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith(b"["):
            items = parse_json(f.read(), str(path), 1)
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise UserError(f"item {i} is not an object", str(path), 1)
                yield 1, item
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = parse_json(line, str(path), lineno)
            if not isinstance(item, dict):
                raise UserError("line is not a JSON object", str(path), lineno)
            yield lineno, item


def read_appended(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line, record) of a JSONL file that a run appends to as it goes (for resuming).

    A torn last line, left by a crash mid-write, is dropped from the file; any other bad
    line is an error naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise UserError("is a directory, expected a records file", str(path))
    lines = path.read_bytes().splitlines(keepends=True)
    out = []
    for k, line in enumerate(lines, 1):
        try:
            rec = parse_json(line, str(path), k)
        except UserError:
            # Torn by a crash mid-write: the last line, a record's start without its newline.
            if k == len(lines) and line.startswith(b"{") and not line.endswith(b"\n"):
                with atomic_write(path, "wb") as f:
                    f.writelines(lines[:-1])
                break
            raise UserError("unreadable record", str(path), k) from None
        if not isinstance(rec, dict) or "index" not in rec:
            raise UserError("not a run record (no `index`)", str(path), k)
        out.append((k, rec))
    return out
