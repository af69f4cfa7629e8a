"""End-to-end CA-TTS throughput (`python -m infer.bench --catts --out DIR`).

`infer.catts` on a checkpoint (default: the bundled CDRL policy) over the first `problems`
synthetic test problems at N = 1, 2, 4, ..., `n`, the policy as its own Expert, with the demo's
methods and decode length, three times in this one process: problem by problem after the draw
(`serial`, the reference), with the batched engine at the config's defaults (`batched`:
`solve_batch` problems through the modules together, `module_batch` auto, 1 on CPU), and with
whole rounds per policy call (`batched_rounds`: module_batch = solve_batch). Each run loads the
policy anew and compiles what it needs (compilation is part of the time a user waits).
report.json: each run's wall time and problems/s, `catts_speedup` (batched over serial
problems/s; `rounds_speedup` the same for batched_rounds) and how many answers (problem,
method, N) each batched run shares with the serial one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import pathlib
import time
from typing import Any

from catts_jax import runs
from catts_jax.tts import run as tts_run

METHODS = "catts,majority,deepconf,best-of-n,greedy"  # the demo's


@dataclasses.dataclass(frozen=True)
class Settings:
  ckpt: str
  problems: int = 64
  n: int = 16
  max_new_tokens: int = 64  # the samples' and re-answers' budget (the demo's)
  solve_batch: int = 32
  data_dir: str | None = None


def _answers(rows: list[dict]) -> dict:
  return {
    (r["id"], method, n): result["answer"]
    for r in rows
    for method, by_n in r.get("methods", {}).items()
    for n, result in (by_n.items() if method in ("catts", "majority", "deepconf", "best-of-n") else ())
  }


MODES = {
  "serial": {"serial": True},
  "batched": {},
  "batched_rounds": {"module_batch": None},  # None: solve_batch
}


def run_once(settings: Settings, catts_cfg, out: pathlib.Path, mode: dict) -> tuple[dict, dict]:
  cfg = copy.deepcopy(catts_cfg)
  cfg.sampling.max_new_tokens = cfg.reflection.max_new_tokens = settings.max_new_tokens
  cfg.solve_batch = settings.solve_batch
  cfg.serial = mode.get("serial", False)
  if "module_batch" in mode:
    cfg.module_batch = settings.solve_batch
  ns = ",".join(str(1 << k) for k in range(settings.n.bit_length()) if 1 << k <= settings.n)
  job = tts_run.prepare(
    cfg, ckpt=settings.ckpt, out=out, benchmark="synthetic", split="test", data_dir=settings.data_dir,
    limit=settings.problems, ns=ns, methods=METHODS, expert="self",
  )  # fmt: skip
  start = time.perf_counter()
  job.run()
  wall = time.perf_counter() - start
  rows = runs.read_rows(out / "results.jsonl")
  errors = sum("error" in r for r in rows)
  figures = {"wall_s": wall, "problems_per_s": len(rows) / wall, "errors": errors}
  return figures, _answers(rows)


def run(settings: Settings, catts_cfg, out: pathlib.Path) -> dict[str, Any]:
  """Both runs into out/serial and out/batched (each starts afresh); returns report.json's
  content."""
  logging.getLogger("catts_jax.tts.expert").setLevel(logging.ERROR)  # the self Expert's unparseable replies
  report: dict[str, Any] = {"args": dataclasses.asdict(settings)}
  answers = {}
  for mode, overrides in MODES.items():
    target = out / mode
    for name in ("results.jsonl", "run.json", "report.json"):
      (target / name).unlink(missing_ok=True)
    report[mode], answers[mode] = run_once(settings, catts_cfg, target, overrides)
  speed = {mode: report[mode]["problems_per_s"] for mode in MODES}
  report["catts_speedup"] = speed["batched"] / speed["serial"]
  report["rounds_speedup"] = speed["batched_rounds"] / speed["serial"]
  for mode in ("batched", "batched_rounds"):
    same = [k for k in answers["serial"] if answers[mode].get(k) == answers["serial"][k]]
    report[mode]["same_answers"] = {"equal": len(same), "of": len(answers["serial"])}
  return report


def table(report: dict) -> str:
  lines = ["| engine | wall s | problems/s | errors | answers as serial's |", "|---|---|---|---|---|"]
  for mode in MODES:
    r = report[mode]
    same = r.get("same_answers")
    shared = f"{same['equal']} of {same['of']}" if same else "-"
    lines.append(f"| {mode} | {r['wall_s']:.1f} | {r['problems_per_s']:.3f} | {r['errors']} | {shared} |")
  speedups = f"catts_speedup {report['catts_speedup']:.2f}x, rounds_speedup {report['rounds_speedup']:.2f}x"
  return "\n".join([*lines, "", speedups])


def write(out: pathlib.Path, report: dict) -> None:
  runs.write_json(out / "report.json", report)
  runs.write_text(out / "report.md", "# CA-TTS throughput\n\n" + table(report) + "\n")
