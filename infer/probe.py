"""Perception-confidence probe: does confidence fall when the model can no longer see?

    python -m infer.probe --ckpt CKPT --benchmark mathvision --data DIR \\
        --perturb noise,occlusion,mosaic,viewpoint,blur --levels 0,0.25,0.5,0.75,1 \\
        [--targeted --clip_model ViT-B-32 --clip_pretrained openai] [--limit K] --out DIR

Writes DIR/results.jsonl (one row per problem, perturbation and level; a rerun resumes),
DIR/report.json, DIR/probe_<kind>.png, and prints a table.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from catts_jax import cli, data, runs
from catts_jax.eval import report
from catts_jax.eval.probe import Probe, ProbeConfig, conditions
from catts_jax.perturb import KINDS
from catts_jax.policy import Policy


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("ckpt", None, "HF checkpoint directory", required=True, flag_values=fv)
  flags.DEFINE_enum("benchmark", None, sorted(data.BUILDERS), "benchmark name", required=True, flag_values=fv)
  flags.DEFINE_string("data", None, "the benchmark's release directory", required=True, flag_values=fv)
  flags.DEFINE_string("split", None, "default: the benchmark's evaluation split", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "where tfds keeps built datasets", flag_values=fv)
  flags.DEFINE_string(
    "perturb", "noise,occlusion,mosaic,viewpoint,blur", "perturbation kinds", flag_values=fv
  )
  flags.DEFINE_string("levels", "0,0.25,0.5,0.75,1", "perturbation strengths", flag_values=fv)
  flags.DEFINE_bool("targeted", False, "perturb only CLIP key regions", flag_values=fv)
  flags.DEFINE_integer("regions", 4, "key regions per image when targeted", flag_values=fv)
  flags.DEFINE_string("clip_model", "ViT-B-32", "open_clip model name", flag_values=fv)
  flags.DEFINE_string("clip_pretrained", None, "open_clip tag or weights file; 'none' = random weights (testing)",
                      flag_values=fv)  # fmt: skip
  flags.DEFINE_integer("limit", None, "the first K problems", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 512, "greedy decode length", flag_values=fv)
  flags.DEFINE_integer("batch_size", 8, "answers per sampler call", flag_values=fv)
  flags.DEFINE_string("dtype", "float32", "compute dtype of the policy", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed of the perturbations", flag_values=fv)
  flags.DEFINE_string("out", None, "output directory", required=True, flag_values=fv)
  flags.DEFINE_bool("rebuild", False, "build the benchmark's cache again from --data", flag_values=fv)


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
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
  if args.targeted and args.clip_pretrained is None:
    print("--targeted needs --clip_pretrained (an open_clip tag, a weights file, or 'none')", file=sys.stderr)
    return 2
  try:
    with runs.locked(args.out):  # one run at a time in --out: fails at once naming the holder
      summary = _probe(args, cfg)
  except runs.OutDirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
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


def _probe(args, cfg: ProbeConfig) -> dict:
  saliency = None
  if args.targeted:
    from catts_jax.saliency import ClipSaliency

    pretrained = None if args.clip_pretrained == "none" else args.clip_pretrained
    saliency = ClipSaliency.from_pretrained(args.clip_model, pretrained)

  dataset = data.load(
    args.benchmark, manual_dir=args.data, data_dir=args.data_dir, split=args.split, rebuild=args.rebuild
  )
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
  runs.write_json(out / "report.json", summary)
  return summary


if __name__ == "__main__":
  sys.exit(main())
