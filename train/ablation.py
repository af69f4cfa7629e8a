"""The CDRL learning check and ablation, in one run on CPU:
`python -m train.ablation --config configs/ablation_colour.py --out DIR`.

A from-scratch tiny model is given a few supervised steps on the toy task, then one RL run per
arm (`cdrl`, `accuracy`) from it; before and after each arm, greedy answers on the test split
are graded and scored on their original and a perturbed image (catts_jax/rl/ablation.py).
DIR/report.json holds the reward curves, the before/after table and the confidence-drop
ratio; each stage resumes. `--out DIR --render_readme README.md [--readme_block NAME]`
rewrites the README's table from DIR/report.json.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags, logging
from ml_collections import config_flags

from catts_jax import cli, runs
from catts_jax.rl import ablation, validate


def define(fv: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file(
    "config", None, "an ablation config, e.g. configs/ablation_colour.py", lock_config=False, flag_values=fv
  )
  flags.DEFINE_string("out", None, "output directory", required=True, flag_values=fv)
  flags.DEFINE_string(
    "render_readme", None, "rewrite this README's ablation table from --out's report.json", flag_values=fv
  )
  flags.DEFINE_string(
    "readme_block", "ablation-table", "the README block --render_readme rewrites", flag_values=fv
  )


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  out = pathlib.Path(args.out)
  if args.render_readme:
    result = json.loads((out / "report.json").read_text())
    runs.render_block(args.render_readme, args.readme_block, f"{out}/report.json", ablation.markdown(result))
    return 0
  if args.config is None:
    print("error: --config is required, e.g. configs/ablation_colour.py", file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  try:
    with runs.locked(out):  # one run at a time in --out
      result = ablation.run(args.config, out)
  except (runs.OutDirError, validate.ConfigError) as e:  # --out held or not writable; a bad setting
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(e, file=sys.stderr)
    return 3
  print(ablation.markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
