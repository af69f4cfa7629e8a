"""A grid of AOT plans (`train.compile`, one subprocess per cell) and its Markdown table.

    python -m train.sweep --out docs/reports/compile_sweep --render_readme docs/sharding.md
    python -m train.sweep --out DIR --models 3b,7b --topologies v5e:4x4 --strategies fsdp --extra=

Cells are models x topologies x strategies x shapes "PxGxR[xI]" (prompts x group x response
tokens [x image patches]) of configs/cdrl_qwen2_5_vl.py, plus the `--extra` cells
model/topology/strategy/PxGxR[xI], `--workers` cells at a time. Rows stream to
DIR/sweep.jsonl (a rerun resumes); cells whose strategies resolve to the same mesh are
compiled once. Writes DIR/sweep.md and DIR/report.json; `--render_readme FILE` also rewrites
the block between `<!-- sweep-table:start -->` and `<!-- sweep-table:end -->` in FILE.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from catts_jax import cli, runs
from catts_jax.aot import sweep
from configs.cdrl_qwen2_5_vl import STRATEGIES

CONFIG_FILE = "configs/cdrl_qwen2_5_vl.py"
EXTRA = [
  "7b/v5e:4x4/fsdp/2x8x1024x0",  # text only: the language model's share
  "7b/v5e:4x4/fsdp_tp/2x8x1024x0",
  "7b/v5e:4x4/fsdp_tp/1x8x1024",  # half the rows
  "7b/v5p:2x2x2/fsdp/2x8x1024x1024",  # a 448x448 image per prompt
  "7b/v5p:2x2x2/fsdp/16x8x2048x1024",  # the paper-like config's own batch
  "3b/v5e:4x4/fsdp/2x8x2048",
  "3b/v5e:4x4/fsdp_tp/2x8x2048",
  "3b/v6e:4x4/fsdp/2x8x2048",
  "3b/v5p:2x2x2/fsdp/2x8x2048",
  "3b/v4:2x2x1/fsdp/2x8x2048",
  "72b/v5e:4x4/fsdp/2x8x1024",
  "72b/v5p:2x2x2/fsdp/2x8x1024",
  "72b/v5p:4x4x4/fsdp_tp/2x8x1024",
]


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string(
    "out", None, "output directory (sweep.jsonl, sweep.md, report.json)", required=True, flag_values=fv
  )
  flags.DEFINE_list("models", ["7b"], "model sizes", flag_values=fv)
  flags.DEFINE_list(
    "topologies", ["v5e:4x4", "v5p:2x2x2", "v6e:4x4", "v4:2x2x1"], "TPU topologies", flag_values=fv
  )
  flags.DEFINE_list("strategies", ["fsdp", "fsdp_tp", "tp", "dp"], "named meshes (configs)", flag_values=fv)
  flags.DEFINE_list(
    "shapes",
    ["2x8x1024", "2x8x2048"],
    "PxGxR[xI]: prompts x group x response [x image patches]",
    flag_values=fv,
  )
  flags.DEFINE_integer("image_patches", 256, "image patches unless a shape says", flag_values=fv)
  flags.DEFINE_list("extra", EXTRA, "extra cells model/topology/strategy/PxGxR[xI]", flag_values=fv)
  flags.DEFINE_list(
    "steps", ["train", "generate"], "steps compiled per cell (generate, score, train)", flag_values=fv
  )
  flags.DEFINE_integer("timeout", 3600, "seconds per cell", flag_values=fv)
  # A 7B cell's compile keeps ~1.7 cores busy and ~2.4 GiB of host memory: on a 2-core machine
  # two at a time gained 7% (docs/sharding.md); raise it on a larger host.
  flags.DEFINE_integer("workers", 1, "cells compiled at a time", flag_values=fv)
  flags.DEFINE_string(
    "render_readme", None, "a Markdown file whose sweep-table block is rewritten", flag_values=fv
  )


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  out = pathlib.Path(args.out)
  try:
    cells = sweep.sweep_cells(args.models, args.topologies, args.strategies, args.shapes, args.extra)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    with runs.locked(out):  # one sweep at a time in --out
      table = _sweep(args, out, cells)
  except runs.OutDirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(table)
  return 0


def _sweep(args, out: pathlib.Path, cells) -> str:
  rows = sweep.run_sweep(
    out,
    cells,
    args.steps,
    args.timeout,
    args.image_patches,
    program=(sys.executable, "-m", "train.compile"),
    config_file=CONFIG_FILE,
    strategies=STRATEGIES,
    workers=args.workers,
    progress=lambda line: print(line, flush=True),
  )
  table = sweep.sweep_markdown(rows)
  runs.write_text(out / "sweep.md", table + "\n")
  runs.write_json(out / "report.json", {"cells": rows})
  if args.render_readme:
    runs.replace_block(args.render_readme, "sweep-table", table)
  return table


if __name__ == "__main__":
  sys.exit(main())
