"""File helpers: JSON/JSONL reading with file:line errors, atomic writes, reading back a
JSONL file that a run appends to, and the checks every output path passes before a command
starts work (`check_output_file`, `check_output_dir`, `check_free_disk`): a refusal is one
line and leaves every file as it was."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

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
    numbered line 1 unless they sit one per line. Errors name the file and line; a file
    without a single record (empty, blank, `[]`) is an error too, found before any work
    depends on it.
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
            if not isinstance(items, list):
                raise UserError("not a JSON list of objects", str(path), 1)
            if not items:
                raise UserError("holds no records (an empty list)", str(path))
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise UserError(f"item {i} is not an object", str(path), 1)
                yield 1, item
            return
        found = False
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = parse_json(line, str(path), lineno)
            if not isinstance(item, dict):
                raise UserError("line is not a JSON object", str(path), lineno)
            found = True
            yield lineno, item
        if not found:
            raise UserError("holds no records (the file is empty or blank)", str(path))


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


# ---------------------------------------------------------------------------- output paths
#
# Every path a command writes passes one of these before any work starts, so a bad `--out`
# is one line naming it, and no file is created or changed. Errors name the setting by its
# field (`out`); a command names its option instead (apr.errors.UserError.fields).


def _existing_ancestor(path: Path) -> Path:
    """The nearest of `path`'s parents that exists (the folder a new path would be made in)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def _check_writable_folder(folder: Path, path: Path, field: str) -> None:
    """`folder` (where `path` would be made) is a folder this process can create files in;
    a probe file, made and removed at once, is the one test that also holds for root and
    for read-only mounts."""
    if not folder.is_dir():
        raise UserError(f"`{field}` cannot be made: {folder} is a file, not a folder", str(path), fields=(field,))
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"`{field}` cannot be written: {folder}: {e.strerror or e}", str(path), fields=(field,)) from None


def _check_not_an_input(path: Path, inputs: Mapping[str, Any], field: str, kind: str) -> None:
    """`inputs`: name -> a path, or several (a repeatable option), or None."""
    for name, given in inputs.items():
        for p in [given] if isinstance(given, (str, os.PathLike)) else list(given or ()):
            if p is not None and same_path(path, p):
                kind = "folder" if Path(p).is_dir() else "file" if Path(p).exists() else kind
                raise UserError(f"`{field}` names the `{name}` {kind}; it would be overwritten: choose another",
                                str(path), fields=(field, name))


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The two names are one file or folder (links and relative names resolved)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_file(path: str | os.PathLike, inputs: Mapping[str, Any] | None = None, field: str = "out") -> Path:
    """A file a command will write (replace): not a folder, in a folder that exists or can
    be made and is writable, and none of the command's `inputs` (name -> path or paths)."""
    path = Path(path)
    _check_not_an_input(path, inputs or {}, field, "file")
    if path.is_dir():
        raise UserError(f"`{field}` is a folder; a file is expected here", str(path), fields=(field,))
    if path.exists() and not path.is_file():
        raise UserError(f"`{field}` is not a regular file", str(path), fields=(field,))
    _check_writable_folder(path.parent if path.parent.exists() else _existing_ancestor(path), path, field)
    return path


def check_output_dir(path: str | os.PathLike, inputs: Mapping[str, Any] | None = None, field: str = "out") -> Path:
    """A folder a command will write into: not a file, itself (or the nearest folder it
    would be made in) writable, and none of the command's `inputs`, nor inside a file."""
    path = Path(path)
    _check_not_an_input(path, inputs or {}, field, "folder")
    if path.exists() and not path.is_dir():
        raise UserError(f"`{field}` is a file; a folder is expected here", str(path), fields=(field,))
    _check_writable_folder(path if path.is_dir() else _existing_ancestor(path), path, field)
    return path


def check_free_disk(path: str | os.PathLike, need: int, what: str, field: str = "out") -> None:
    """Refuse to start writing about `need` bytes at `path` when its file system has less free."""
    path = Path(path)
    folder = path if path.is_dir() else _existing_ancestor(path)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise UserError(f"{what} needs about {human_bytes(need)}; the disk holding it has {human_bytes(free)} free",
                        str(path), fields=(field,))


def human_bytes(n: float) -> str:
    """A byte count as people read it: `512 bytes`, `3.2 GB`."""
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} PB"
