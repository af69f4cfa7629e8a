"""Perception-confidence probe: does confidence fall when the model can no longer see?

    python -m infer.probe --ckpt CKPT --benchmark mathvision --data DIR \\
        --perturb noise,occlusion,mosaic,viewpoint,blur --levels 0,0.25,0.5,0.75,1 \\
        [--targeted --clip-model ViT-B-32 --clip-pretrained openai] [--limit K] --out DIR

Writes DIR/results.jsonl (one row per problem, perturbation and level; a rerun resumes),
DIR/report.json, DIR/probe_<kind>.png, and prints a table.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from catts_jax import data
from catts_jax.eval import report
from catts_jax.eval.probe import Probe, ProbeConfig, conditions
from catts_jax.perturb import KINDS
from catts_jax.policy import Policy


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description="accuracy and confidence under image perturbations")
  p.add_argument("--ckpt", required=True, help="HF checkpoint directory")
  p.add_argument("--benchmark", required=True, choices=sorted(data.BUILDERS))
  p.add_argument("--data", required=True, help="the benchmark's release directory")
  p.add_argument("--split", default=None)
  p.add_argument("--data-dir", default=None, help="where tfds keeps built datasets")
  p.add_argument("--perturb", default="noise,occlusion,mosaic,viewpoint,blur")
  p.add_argument("--levels", default="0,0.25,0.5,0.75,1")
  p.add_argument("--targeted", action="store_true", help="perturb only CLIP key regions")
  p.add_argument("--regions", type=int, default=4, help="key regions per image when targeted")
  p.add_argument("--clip-model", default="ViT-B-32")
  p.add_argument(
    "--clip-pretrained", default=None, help="open_clip tag or weights file; 'none' = random weights (testing)"
  )
  p.add_argument("--limit", type=int, default=None)
  p.add_argument("--max-new-tokens", type=int, default=512)
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  kinds = tuple(k for k in args.perturb.split(",") if k)
  unknown = [k for k in kinds if k not in KINDS]
  if unknown:
    print(f"unknown perturbation(s) {unknown}; choose from {KINDS}", file=sys.stderr)
    return 2
  levels = tuple(sorted({float(x) for x in args.levels.split(",")}))
  cfg = ProbeConfig(
    kinds=kinds,
    levels=levels,
    targeted=args.targeted,
    regions=args.regions,
    max_new_tokens=args.max_new_tokens,
    batch_size=args.batch_size,
    seed=args.seed,
  )
  saliency = None
  if args.targeted:
    if args.clip_pretrained is None:
      print(
        "--targeted needs --clip-pretrained (an open_clip tag, a weights file, or 'none')", file=sys.stderr
      )
      return 2
    from catts_jax.saliency import ClipSaliency

    pretrained = None if args.clip_pretrained == "none" else args.clip_pretrained
    saliency = ClipSaliency.from_pretrained(args.clip_model, pretrained)

  dataset = data.load(args.benchmark, manual_dir=args.data, data_dir=args.data_dir, split=args.split)
  examples = [dataset[i] for i in range(min(len(dataset), args.limit or len(dataset)))]
  policy = Policy.from_pretrained(args.ckpt, dtype=args.dtype)
  probe = Probe(policy, examples, args.benchmark, cfg, saliency)

  from tqdm import tqdm

  out = pathlib.Path(args.out)
  with tqdm(total=len(examples) * len(conditions(cfg)), desc="probe", unit="answer") as bar:
    summary = probe.run(out, progress=bar.update)
  summary.update(
    checkpoint=str(args.ckpt), benchmark=args.benchmark, split=dataset.split, problems=len(examples)
  )
  report.write_json(out / "report.json", summary)
  columns = [
    "kind",
    "level",
    "problems",
    "errors",
    "accuracy",
    "confidence",
    "topk_confidence",
    "ece",
    "auroc",
    "confidence_drop_ratio",
  ]
  print(report.text_table(summary["conditions"], columns))
  return 0


if __name__ == "__main__":
  sys.exit(main())
