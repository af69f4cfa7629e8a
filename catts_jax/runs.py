"""The `--out DIR` contract every entry point keeps.

- One run at a time per directory: `with runs.locked(out):` holds an exclusive lock on
  OUT/.lock (which names the holder's pid) for the whole run; a second run on the same --out
  fails at once with `OutDirError` naming that pid, and so does an --out that cannot be created
  or written. Entry points print it as one line and exit 2.
- `report.json` (and any other summary) is written atomically: a killed run never leaves a
  half-written file in place of an earlier good one. `write_text`, `write_json`,
  `write_lines` (JSONL written whole, e.g. graded.jsonl) and `replacing` (any writer, e.g. a
  plot) all go through a temporary file beside the target and a rename.
- Results stream to JSONL, one row per finished item, flushed as they come: a killed run
  resumes from the rows already there (`read_rows`; a line cut off by the kill is dropped).
  A training log is cut back to the step its checkpoint restored (`drop_rows_after`).
- `run.json` holds the settings a run's rows depend on; a resume with other settings is
  refused (`check_settings`) instead of mixing rows.
- README tables are rendered from a committed report.json into a marked block of a Markdown
  file (`render_block`), never typed by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np


def _clean(value: Any) -> Any:
  """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
  if isinstance(value, Mapping):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_clean(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class OutDirError(ValueError):
  """An --out directory that cannot be used: held by another run, or not creatable or not
  writable. Its message is one line naming the directory."""


LOCK_FILE = ".lock"
_held: dict[pathlib.Path, list] = {}  # resolved directory -> [open lock file, depth]


@contextlib.contextmanager
def locked(out: str | pathlib.Path) -> Iterator[pathlib.Path]:
  """`with runs.locked(out):` creates `out` if needed and holds an exclusive, non-blocking
  `fcntl.flock` on out/.lock (holding this process's pid) until the block ends. Raises
  OutDirError at once when another process holds it ("... in use by another run (pid N) ...")
  or when `out` cannot be created or written. Re-entrant within one process (a library
  function may lock the directory its entry point already locked). The lock file stays; the
  kernel drops the lock when its holder exits, however it ends."""
  out = pathlib.Path(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OutDirError(f"cannot create {out} ({e.strerror or e}); choose another --out") from None
  key = out.resolve()
  if key in _held:
    _held[key][1] += 1
    try:
      yield out
    finally:
      _held[key][1] -= 1
    return
  try:
    f = open(key / LOCK_FILE, "a+", encoding="utf-8")
  except OSError as e:
    raise OutDirError(f"{out} is not writable ({e.strerror or e}); choose another --out") from None
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    pid = f.read().strip() or "unknown"
    f.close()
    raise OutDirError(
      f"{out} is in use by another run (pid {pid}); wait for it or choose another --out"
    ) from None
  try:
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
  except OSError as e:
    f.close()
    raise OutDirError(f"{out} is not writable ({e.strerror or e}); choose another --out") from None
  _held[key] = [f, 1]
  try:
    yield out
  finally:
    del _held[key]
    f.close()  # releases the lock


@contextlib.contextmanager
def replacing(path: str | pathlib.Path) -> Iterator[pathlib.Path]:
  """`with replacing(path) as tmp:` write `tmp` (same suffix, beside `path`) by any means; on
  success it replaces `path` in one rename, on an exception it is removed and `path` is left as
  it was."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_text(path: str | pathlib.Path, text: str) -> pathlib.Path:
  """Write `text` to `path` atomically (a temporary file beside it, then a rename)."""
  path = pathlib.Path(path)
  with replacing(path) as tmp:
    tmp.write_text(text, encoding="utf-8")
  return path


def write_lines(path: str | pathlib.Path, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
  """`rows` as JSONL (one JSON object a line), atomically: the old file stays whole until
  every row is written."""
  path = pathlib.Path(path)
  with replacing(path) as tmp, tmp.open("w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return path


def write_json(path: str | pathlib.Path, report: Mapping[str, Any], default=None) -> pathlib.Path:
  """`report` as JSON (NaN/inf as null), atomically; `default` as for `json.dumps`."""
  return write_text(path, json.dumps(_clean(report), indent=2, ensure_ascii=False, default=default) + "\n")


def read_rows(path: pathlib.Path, required: str | None = None) -> list[dict[str, Any]]:
  """Rows of a results.jsonl (none if missing); a line cut off by a killed run is skipped. A
  whole line that is not a JSON object, or lacks the `required` key, is a ValueError naming the
  file and line (an edited file: resuming past it would redo or lose items)."""
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  rows = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut off by a killed run; its item is redone
    if not isinstance(row, dict) or (required is not None and required not in row):
      what = "not a JSON object" if not isinstance(row, dict) else f"a row without {required!r}"
      raise ValueError(f"{path}: line {number} is {what}; remove it (or use another --out) to resume")
    rows.append(row)
  return rows


def trim_partial_line(path: pathlib.Path) -> None:
  """Drops a last line cut off by a killed run, so appended rows start on a line of their own."""
  path = pathlib.Path(path)
  if not path.is_file():
    return
  text = path.read_bytes()
  if text and not text.endswith(b"\n"):
    path.write_bytes(text[: text.rfind(b"\n") + 1])


@contextlib.contextmanager
def appending(path: pathlib.Path) -> Iterator[Callable[[Mapping[str, Any]], None]]:
  """`with appending(DIR / "results.jsonl") as write: write(row)`: each row becomes one line,
  flushed at once. A line cut off by an earlier kill is trimmed first."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  trim_partial_line(path)
  with path.open("a", encoding="utf-8") as f:

    def write(row: Mapping[str, Any]) -> None:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      f.flush()

    yield write


def drop_rows_after(path: str | pathlib.Path, step: int) -> int:
  """Drop the rows of a training log (train.jsonl) whose "step" is past `step`, the step a
  resume restored: a run killed after logging a step but before its checkpoint committed
  logs that step again. The file is rewritten atomically (`write_lines`), and only when a row
  goes; the number of rows dropped."""
  rows = read_rows(path)
  kept = [row for row in rows if row.get("step", 0) <= step]
  if len(kept) < len(rows):
    write_lines(path, kept)
  return len(rows) - len(kept)


def check_settings(out: pathlib.Path, settings: Mapping[str, Any], keys: Sequence[str]) -> None:
  """The first run writes out/run.json; a resumed run must match it on `keys`, else its rows
  would mix with rows of other settings."""
  path = pathlib.Path(out) / "run.json"
  if path.is_file():
    try:
      old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(
        f"{path} is damaged ({e}); use another --out (or delete it to resume the rows there)"
      ) from None
    diff = [k for k in keys if old.get(k) != settings.get(k)]
    if diff:
      raise ValueError(f"{out} holds a run with other {', '.join(diff)}; use another --out")
    return
  write_json(path, settings)


def replace_block(path: str | pathlib.Path, name: str, text: str) -> None:
  """Replace what lies between `<!-- {name}:start -->` and `<!-- {name}:end -->` in a
  Markdown file."""
  path = pathlib.Path(path)
  start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
  content = path.read_text()
  if start not in content or end not in content:
    raise ValueError(f"{path}: no {start} ... {end} block to replace")
  head, rest = content.split(start, 1)
  _, tail = rest.split(end, 1)
  write_text(path, f"{head}{start}\n{text}\n{end}{tail}")


def render_block(markdown: str | pathlib.Path, name: str, source: str | pathlib.Path, text: str) -> None:
  """Rewrite block `name` of a Markdown file (a README) with `text`, headed by the path of the
  report.json it was rendered from."""
  replace_block(markdown, name, f"`{source}`\n\n{text}")
