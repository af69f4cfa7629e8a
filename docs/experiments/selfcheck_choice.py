"""The Visual Self-Check's mode chosen on validation problems no earlier choice used (256-767;
the first 256 chose the Expert): for each demo run given, CA-TTS and the self-check's step on
the problems with index in [FIRST, LAST). The rule, fixed before the runs: the mode with the
higher CA-TTS - majority at N = 16 becomes ours. The runs (bundled checkpoints):

  python -m infer.demo --split validation --limit 768 --calibration_size 8 --mv_limit 0 \
      --config.selfcheck.mode=M --out runs/val768_M            # M: contrastive, drop
  python docs/experiments/selfcheck_choice.py docs/reports/selfcheck_choice/report.json \
      256 768 runs/val768_contrastive runs/val768_drop
The same figures for the test-split demos before (b193be8, contrastive) and after (drop) the
choice, reported, not used for it:
  git archive b193be8 docs/reports/demo | tar -x -C /tmp/b193   # then rename it demo_b193be8
  python docs/experiments/selfcheck_choice.py docs/reports/selfcheck_choice/test_demos.json \
      0 256 /tmp/b193/demo_b193be8 docs/reports/demo
"""

import json
import pathlib
import sys

import numpy as np

from catts_jax.eval import metrics
from catts_jax.tts.planner import VISUAL_SELF_CHECK

NS = [1, 2, 4, 8, 16]
METHODS = ("majority", "sc+voter+sr", "catts")


def correct(rows: list[dict], method: str, n: int) -> list[bool]:
  return [bool(r["methods"][method][str(n)]["correct"]) for r in rows]


def selfcheck_added(rows: list[dict], n: int) -> list[float]:
  """The votes the self-check added per problem where it ran in CA-TTS at N = n."""
  modules = [m for r in rows for m in r["methods"]["catts"][str(n)]["modules"]]
  checks = [m for m in modules if m["module"] == VISUAL_SELF_CHECK and m["ran"]]
  return [sum(m.get("added", {}).values()) + m.get("contrastive", {}).get("added", 0.0) for m in checks]


def vcd_figures(rows: list[dict]) -> dict:
  if not rows:
    return {"vcd_answer_is_greedy": None, "vcd_right": None, "greedy_right": None}
  return {
    "vcd_answer_is_greedy": float(np.mean([r["vcd"]["answer"] == r["greedy"]["answer"] for r in rows])),
    "vcd_right": float(np.mean([r["vcd"]["correct"] for r in rows])),
    "greedy_right": float(np.mean([r["greedy"]["correct"] for r in rows])),
  }


def measure(run: pathlib.Path, first: int, last: int) -> dict:
  rows = [json.loads(line) for line in (run / "catts_synthetic" / "results.jsonl").read_text().splitlines()]
  rows = [r for r in rows if first <= r["index"] < last]
  ok = [r for r in rows if "error" not in r]
  config = json.loads((run / "catts_synthetic" / "run.json").read_text())["config"]
  added = selfcheck_added(ok, NS[-1])
  return {
    "selfcheck": dict(config["selfcheck"]),
    "problems": len(rows),
    "errors": len(rows) - len(ok),
    "accuracy": {m: {str(n): float(np.mean(correct(ok, m, n))) for n in NS} for m in METHODS},
    "slope": {
      m: metrics.scaling_slope_ci(NS, [correct(ok, m, n) for n in NS]) for m in ("majority", "catts")
    },
    "catts_vs_majority_at_16": metrics.paired_difference_ci(
      correct(ok, "catts", 16), correct(ok, "majority", 16)
    ),
    "selfcheck_step_at_16": metrics.paired_difference_ci(
      correct(ok, "sc+voter+sr+sck", 16), correct(ok, "sc+voter+sr", 16)
    ),
    # Why the contrastive check votes like the policy: its VCD answer is mostly the greedy one
    # (runs with the drop check decode no VCD answer: None).
    **vcd_figures([r for r in ok if r["vcd"]]),
    "selfcheck_ran_at_16": len(added),
    "selfcheck_added_mean_at_16": float(np.mean(added)) if added else 0.0,
  }


def main(out: str, first: int, last: int, runs: list[str]) -> None:
  report = {
    "problems": [first, last],
    "runs": {pathlib.Path(run).name: measure(pathlib.Path(run), first, last) for run in runs},
  }
  pathlib.Path(out).write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
