"""Grade a predictions file against a benchmark.

  python -m infer.evaluate --benchmark mathvision --data ../shared/data/math-vision-testmini \\
      --predictions preds.jsonl --out runs/eval

Rows: {"id", "response"[, "confidence"]}. Writes OUT/graded.jsonl (per row: correct, extracted
answer, or the error that row had), OUT/report.json, OUT/report.md and, with confidences,
OUT/reliability.png; prints a table.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from catts_jax import data
from catts_jax.eval import predictions


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--benchmark", required=True, choices=sorted(data.BUILDERS))
  p.add_argument("--data", required=True, help="the benchmark's release directory (manual_dir)")
  p.add_argument("--split", default=None, help="default: the benchmark's usual evaluation split")
  p.add_argument(
    "--data-dir", default=None, help="where built datasets are cached (default ~/tensorflow_datasets)"
  )
  p.add_argument("--predictions", required=True, help="JSONL with id, response[, confidence]")
  p.add_argument("--out", required=True, help="output directory")
  args = p.parse_args(argv)

  if not pathlib.Path(args.predictions).is_file():
    print(f"error: predictions file {args.predictions} not found", file=sys.stderr)
    return 2
  try:
    dataset = data.load(args.benchmark, manual_dir=args.data, data_dir=args.data_dir, split=args.split)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  summary = predictions.evaluate_file(args.benchmark, dataset, args.predictions, args.out)
  print(predictions.human_summary(summary))
  for message in summary["error_messages"][:5]:
    print(f"bad row: {message}", file=sys.stderr)
  print(f"\nwrote {pathlib.Path(args.out) / 'report.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
