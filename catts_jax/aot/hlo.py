"""Reading compiled HLO and compiler errors: the collectives a step runs (and which of them
run once per loop iteration) and the numbers of an out-of-memory error."""

from __future__ import annotations

import math
import os
import pathlib
import re

from catts_jax.aot.hardware import GiB

COLLECTIVES = (
  "all-gather",
  "all-reduce",
  "reduce-scatter",
  "all-to-all",
  "ragged-all-to-all",
  "collective-permute",
  "collective-broadcast",
)

_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][\w\-]*)\(")
_CALLEE = re.compile(r"\b(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_WHILE = re.compile(r"\bwhile\(.*?\bbody=%?([\w.\-]+)")
_CONDITION = re.compile(r"\bcondition=%?([\w.\-]+)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_ARRAY = re.compile(r"\b(pred|[su]\d+|bf16|f\d+\w*|c64|c128)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16, "c64": 64, "c128": 128}


def _array_bytes(dtype: str, dims: str) -> float:
  bits = _BITS.get(dtype) or int(re.match(r"[a-z]+(\d+)", dtype).group(1))
  return math.prod(int(d) for d in dims.split(",") if d) * bits / 8


def hlo_collectives(hlo: str) -> dict[str, dict]:
  """Collectives in compiled HLO text: {op: {count, bytes, loop_count, loop_bytes,
  step_count, step_bytes}}. `bytes` is the size of each op's result (async `-start` ops: their
  largest buffer); `loop_*` are the ones inside a while loop's body (run once per iteration,
  e.g. per decoded token); `step_*` count what one run of the program moves, ops in loops of
  a known trip count (scanned layers, micro-batches) as often as they run, ops in loops of
  unknown length (decoding) once."""
  calls: dict[str, set[str]] = {}
  found: dict[str, list[tuple[str, float]]] = {}
  loop_roots: set[str] = set()
  trips = known_trip_counts(hlo)
  entry = current = None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      current = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
      current = current.lstrip("%")
      entry = current if line.startswith("ENTRY") else entry
      calls.setdefault(current, set())
      continue
    if current is None:
      continue
    callees = set(_CALLEE.findall(line))
    for group in _BRANCHES.findall(line):
      callees.update(c.strip().lstrip("%") for c in group.split(","))
    calls[current].update(callees)
    loop_roots.update(_WHILE.findall(line))
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    shape, opcode = m.groups()
    if opcode.endswith("-done"):
      continue
    base = opcode.removesuffix("-start")
    if base not in COLLECTIVES:
      continue
    sizes = [_array_bytes(*a) for a in _ARRAY.findall(shape)]
    nbytes = max(sizes, default=0) if opcode.endswith("-start") else sum(sizes)
    found.setdefault(current, []).append((base, nbytes))
  in_loop, todo = set(), list(loop_roots)
  while todo:
    name = todo.pop()
    if name not in in_loop:
      in_loop.add(name)
      todo.extend(calls.get(name, ()))
  runs = _runs_per_step(entry, calls, trips)
  out: dict[str, dict] = {}
  for comp, ops in found.items():
    for op, nbytes in ops:
      row = out.setdefault(op, dict(count=0, bytes=0, loop_count=0, loop_bytes=0, step_count=0, step_bytes=0))
      row["count"] += 1
      row["bytes"] += int(nbytes)
      row["step_count"] += runs.get(comp, 1)
      row["step_bytes"] += int(nbytes) * runs.get(comp, 1)
      if comp in in_loop:
        row["loop_count"] += 1
        row["loop_bytes"] += int(nbytes)
  return out


def known_trip_counts(hlo: str) -> dict[str, int]:
  """{loop body: iterations} for the while loops of a fixed trip count (scans over layers or
  micro-batches; a decode loop's depends on the tokens): the compiler's `known_trip_count`
  where it states one (CPU, GPU), else a loop whose condition only compares the counter with a
  constant (TPU), taken to run that many times (JAX's scans count from 0 in steps of 1)."""
  computations: dict[str, list[str]] = {}
  loops: list[tuple[str, str, str]] = []  # (body, condition, the while instruction)
  current = None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      current = (line.split()[1] if line.startswith("ENTRY") else line.split()[0]).lstrip("%")
      computations[current] = []
    elif current is not None and (m := _INSTRUCTION.match(line)):
      computations[current].append(m.group(2))
      if m.group(2) == "while" and (body := _WHILE.search(line)) and (cond := _CONDITION.search(line)):
        loops.append((body.group(1), cond.group(1), line))
  trips = {}
  for body, cond, line in loops:
    if stated := _TRIPS.search(line):
      trips[body] = int(stated.group(1))
    elif sorted(set(computations.get(cond, ()))) == ["compare", "constant", "get-tuple-element", "parameter"]:
      constant = re.search(rf"^%?{re.escape(cond)}\b.*?\{{(.*?)^\}}", hlo, re.M | re.S)
      values = re.findall(r"constant\((\d+)\)", constant.group(1)) if constant else []
      if len(values) == 1:
        trips[body] = int(values[0])
  return trips


def _runs_per_step(entry: str | None, calls: dict[str, set[str]], trips: dict[str, int]) -> dict[str, int]:
  """How often each computation runs in one run of `entry`: a loop body of known trip count
  n runs n times per run of its caller (nested loops multiply), anything else once per call."""
  runs: dict[str, int] = {}

  def visit(name: str, times: int) -> None:
    runs[name] = runs.get(name, 0) + times
    for callee in calls.get(name, ()):
      visit(callee, times * trips.get(callee, 1))

  if entry is not None:
    visit(entry, 1)
  return runs


_OOM_TEMPS = re.compile(
  r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"
)
_OOM_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")


def _gib(value: str, unit: str) -> float:
  return float(value) * 1024.0 ** ("KMGT".index(unit) + 1 if unit else 0) / GiB


def compile_oom(error: Exception) -> dict | None:
  """The compiler's out-of-memory numbers, or None when the error is something else."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
    return None
  out = {"message": text.strip().splitlines()[0][:500]}
  if m := _OOM_TEMPS.search(text):
    out.update(temp_gib=_gib(*m.groups()[:2]), available_gib=_gib(*m.groups()[2:]))
  elif m := _OOM_USED.search(text):
    out.update(used_gib=_gib(*m.groups()[:2]), available_gib=_gib(*m.groups()[2:]))
  return out


# Where the compiler dumps the HLO it compiled, when `dump_compiled_hlo` has asked it to.
DUMP_FLAG = "--xla_dump_to="


def dump_compiled_hlo(directory: str) -> None:
  """Ask XLA to write every compiled program's optimised HLO as text under `directory` (only
  effective before jax starts its backends). Some TPU programs cannot be printed back from
  the compiled executable (`Compiled.as_text` fails on their async collectives); the dump,
  written by the compiler itself, always can."""
  flags = os.environ.get("XLA_FLAGS", "")
  if DUMP_FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {DUMP_FLAG}{directory} --xla_dump_hlo_as_text".strip()


def dumped_programs() -> set[pathlib.Path]:
  """The optimised-HLO files dumped so far (empty without `dump_compiled_hlo`)."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  directory = next((f.removeprefix(DUMP_FLAG) for f in flags if f.startswith(DUMP_FLAG)), None)
  if directory is None or not os.path.isdir(directory):
    return set()
  return set(pathlib.Path(directory).glob("*after_optimizations.txt"))
