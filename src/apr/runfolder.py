"""Where runs keep their records: append-only JSONL files that a rerun resumes, and the
`apr eval` run folder around one (run.json, records.jsonl, summary.json).

Records are appended and flushed one by one as problems finish, so a crash keeps every
finished record; a torn last line (a crash mid-write) is dropped when the file is read.
`apr run` writes a bare records file; `apr eval` a run folder; `apr report` only reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

from apr.engine.base import EngineError
from apr.errors import UserError
from apr.io import atomic_write, read_appended
from apr.countdown import Problem
from apr.records import Record


def read_records(path: Path) -> list[tuple[int, Record]]:
    """(line, record) of a records file; [] when it does not exist yet."""
    return [(k, Record.from_json(d, str(path), k)) for k, d in read_appended(path)]


def append_records(path: Path, records: Iterable[Record], total: int, finished: int, desc: str,
                   progress: bool = True) -> Iterator[Record]:
    """Append each record to `path` as it comes (flushed), with a progress bar over `total`
    of which `finished` were done before (when `progress` and stderr is a terminal); yields
    the records. An engine failure stops the
    run with a one-line error that says the finished records were kept."""
    from tqdm import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, initial=finished, desc=desc, unit="sample", file=sys.stderr,
               disable=None if progress else True)
    correct = 0
    with open(path, "a") as f:
        try:
            for n, rec in enumerate(records, 1):
                f.write(json.dumps(rec.to_json()) + "\n")
                f.flush()
                correct += rec.correct
                bar.update()
                bar.set_postfix(acc=f"{correct / n:.3f}")
                yield rec
        except EngineError as e:
            raise UserError(f"engine failed ({e}); finished records kept in {path}: rerun to resume") from None
        finally:
            bar.close()


class RunFolder:
    """An `apr eval` folder: run.json says what was run (model, method, settings, problem
    file hash), records.jsonl holds one record per (problem, sample), summary.json what
    `apr.eval_summary.summarize` made of them. Records are only appended to a folder whose run.json
    matches the run, so results of different settings never mix."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run_json = self.path / "run.json"
        self.records_file = self.path / "records.jsonl"
        self.summary_json = self.path / "summary.json"

    def meta(self) -> dict:
        """run.json, or a one-line error when this is no run folder."""
        if not self.run_json.is_file():
            raise UserError("no run.json; not an `apr eval` folder", str(self.path))
        try:
            meta = json.loads(self.run_json.read_text())
        except json.JSONDecodeError:
            raise UserError("unreadable run.json; not an `apr eval` folder?", str(self.run_json)) from None
        if not isinstance(meta, dict):
            raise UserError("run.json is not a JSON object", str(self.run_json))
        return meta

    def open(self, meta: dict, identity: Iterable[str], renamed: dict[str, str] | None = None) -> dict[tuple[int, int], Record]:
        """Check (or create) run.json for `meta`; return the finished records by (problem,
        sample). A folder of another run (any `identity` key differs) is refused untouched.
        `renamed`: old -> new names of keys, for run.json files written before a rename."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError("`out` must be a folder", str(self.path), fields=("out",))
        if self.run_json.exists():
            old = self.meta()
            for was, now in (renamed or {}).items():
                if was in old and now not in old:
                    old[now] = old.pop(was)
            for key in identity:
                if old.get(key) != meta.get(key):
                    raise UserError(f"holds a run of another {key} ({old.get(key)!r}, not {meta.get(key)!r}); "
                                    "use another `out`", str(self.path), fields=("out",))
        elif self.records_file.exists() or self.summary_json.exists():
            raise UserError("holds results without run.json; use another `out`", str(self.path), fields=("out",))
        done = self.finished()
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_json) as f:
            json.dump(meta, f, indent=2)
        return done

    def finished(self) -> dict[tuple[int, int], Record]:
        """The records written so far, by (problem, sample)."""
        return {(r.index, r.sample or 0): r for _, r in read_records(self.records_file)}

    def summary(self) -> dict:
        try:
            return json.loads(self.summary_json.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"unreadable summary.json: {e.msg}", str(self.summary_json)) from None

    def write_summary(self, summary: dict) -> None:
        with atomic_write(self.summary_json) as f:
            json.dump(summary, f, indent=2)


def records_to_resume(path: Path, model: str, method: str, arithmetic: str = "model") -> dict[int, Record]:
    """The records an `apr run` into `path` resumes from, by problem index: none when the
    file does not exist. A file that is not a records file, or holds records of another
    model, method or arithmetic mode, is refused untouched (check it before loading a model)."""
    done: dict[int, Record] = {}
    try:
        found = read_records(path)
    except UserError as e:
        raise UserError(f"`out` is not an `apr run` records file: {e}", fields=("out",)) from None
    for k, rec in found:
        # a record without `arithmetic` is unassisted (the key is written only for exact)
        for key, have, want in (("model", rec.model, model), ("method", rec.method, method),
                                ("arithmetic", rec.arithmetic or "model", arithmetic)):
            if have != want:
                raise UserError(f"holds records of another run ({key} {have!r}, not {want!r}); "
                                "use another `out`", str(path), k, fields=("out",))
        done[rec.index] = rec
    return done


def run_to_file(engine, cfg, problems: list[tuple[int, Problem]], path: Path, model: str,
                progress: bool = True) -> dict[int, Record]:
    """`apr run`: run the problems not yet in the records file `path` (one sample each),
    appending each record as it finishes; returns all records by problem index. A file
    holding records of another model or method is refused untouched."""
    from apr.runtime import Runtime

    done = records_to_resume(path, model, cfg.method, cfg.arithmetic)
    todo = [(i, p) for i, p in problems if i not in done]

    def labelled():
        for rec in Runtime(engine, cfg).iter_run(todo):
            rec.model = model
            yield rec

    for rec in append_records(path, labelled(), len(problems), len(problems) - len(todo), f"{cfg.method} run", progress):
        done[rec.index] = rec
    return done
