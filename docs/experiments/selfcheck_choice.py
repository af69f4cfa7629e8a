"""The Visual Self-Check's mode chosen on validation problems no earlier choice used (256-767;
the first 256 chose the Expert): for each demo run given, CA-TTS and the self-check's step on
the problems with index in [FIRST, LAST). The rule, fixed before the runs: the mode with the
higher CA-TTS - majority at N = 16 becomes ours. The runs (bundled checkpoints):

  python -m infer.demo --split validation --limit 768 --calibration_size 8 --mv_limit 0 \
      --config.selfcheck.mode=M --out runs/val768_M            # M: contrastive, drop
  python docs/experiments/selfcheck_choice.py docs/reports/selfcheck_choice/report.json \
      256 768 runs/val768_contrastive runs/val768_drop
"""

import json
import pathlib
import sys

from catts_jax.eval import metrics
from catts_jax.tts import summary

NS = [1, 2, 4, 8, 16]


def measure(run: pathlib.Path, first: int, last: int) -> dict:
  rows = [json.loads(line) for line in (run / "catts_synthetic" / "results.jsonl").read_text().splitlines()]
  rows = [r for r in rows if first <= r["index"] < last]
  ok = [r for r in rows if "error" not in r]
  config = json.loads((run / "catts_synthetic" / "run.json").read_text())["config"]

  def accuracy(method: str) -> dict:
    return {str(n): float(sum(summary._correct(ok, method, n)) / len(ok)) for n in NS}

  def slope(method: str) -> dict:
    return metrics.scaling_slope_ci(NS, [summary._correct(ok, method, n) for n in NS])

  return {
    "selfcheck": dict(config["selfcheck"]),
    "problems": len(rows),
    "errors": len(rows) - len(ok),
    "accuracy": {m: accuracy(m) for m in ("majority", "sc+voter+sr", "catts")},
    "slope": {m: slope(m) for m in ("majority", "catts")},
    "catts_vs_majority_at_16": summary.versus(ok, "catts", "majority", 16),
    "selfcheck_step_at_16": summary.versus(ok, "sc+voter+sr+sck", "sc+voter+sr", 16),
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
