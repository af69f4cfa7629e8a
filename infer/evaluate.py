"""Grade a predictions file against a benchmark.

  python -m infer.evaluate --benchmark mathvision --data ../shared/data/math-vision-testmini \\
      --predictions preds.jsonl --out runs/eval

Rows: {"id", "response"[, "confidence" in [0, 1]]}, one per id (`--dedupe first|last` keeps
one of several, `--dedupe all` grades every row: N samples per problem). Writes
OUT/graded.jsonl (per row: correct, extracted answer, or the error that row had),
OUT/report.json, OUT/report.md and, with confidences, OUT/reliability.png; prints a table and
the headline ("accuracy 0.750 on 3 of 304 problems (coverage 1.0%)").

The predictions file is checked whole before anything is written: a malformed file (not UTF-8,
a line that is not a JSON object, a row without id, a bad confidence, a duplicate id) is one
error line naming the file and line, exit 2, and OUT keeps an earlier run's files as they were.
OUT is locked for the run: a second run on it fails at once naming the first one's pid. The
benchmark's built cache follows the data folder's content (`--rebuild` forces a new build).
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from catts_jax import cli, data, runs
from catts_jax.eval import predictions


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("benchmark", None, sorted(data.BUILDERS), "benchmark name", required=True, flag_values=fv)
  flags.DEFINE_string("data", None, "the benchmark's release directory (manual_dir)", required=True,
                      flag_values=fv)  # fmt: skip
  flags.DEFINE_string("split", None, "default: the benchmark's usual evaluation split", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "where built datasets are cached (default ~/tensorflow_datasets)",
                      flag_values=fv)  # fmt: skip
  flags.DEFINE_string("predictions", None, "JSONL with id, response[, confidence]", required=True,
                      flag_values=fv)  # fmt: skip
  flags.DEFINE_string("out", None, "output directory", required=True, flag_values=fv)
  flags.DEFINE_enum("dedupe", "error", predictions.DEDUPE,
                    "an id on several rows: an error, keep the first or last row, or grade all (N samples)",
                    flag_values=fv)  # fmt: skip
  flags.DEFINE_bool("rebuild", False, "build the benchmark's cache again from --data", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
  args = cli.parse(define, argv, __doc__)
  if not pathlib.Path(args.predictions).is_file():
    print(f"error: predictions file {args.predictions} not found", file=sys.stderr)
    return 2
  try:
    with runs.locked(args.out):  # fails at once when another run holds --out
      rows = predictions.read_predictions(args.predictions, args.dedupe)  # before anything is written
      try:
        dataset = data.load(
          args.benchmark, manual_dir=args.data, data_dir=args.data_dir, split=args.split, rebuild=args.rebuild
        )
      except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
      summary = predictions.evaluate_file(
        args.benchmark, dataset, args.predictions, args.out, args.dedupe, rows=rows
      )
  except (runs.OutDirError, predictions.PredictionsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(predictions.human_summary(summary))
  for message in summary["error_messages"][:5]:
    print(f"bad row: {message}", file=sys.stderr)
  print(f"\nwrote {pathlib.Path(args.out) / 'report.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
