"""The demo: the bundled tiny checkpoints' calibration and test-time scaling, on CPU in minutes.

    python -m infer.demo --out runs/demo [--sft checkpoints/synthetic_sft] \\
        [--cdrl checkpoints/synthetic_cdrl] [--split test] [--limit K] [--render_readme docs/results.md]

1. Before/after CDRL: greedy answers of the SFT and the CDRL checkpoint on the synthetic test
   split, each answer scored on its image and, teacher-forced, under VCD noise at full
   strength (the image is gone): accuracy, ECE, AUROC, confidence drop.
2. CA-TTS and its baselines on the CDRL checkpoint (as infer.catts runs them, with
   configs/catts.py, `--expert self`, samples at `--temperature`, 0.7), N = 1..16,
   on the test split (the first --limit problems if given).
3. The real-benchmark path: the CDRL checkpoint through Math-Vision testmini (--mv_limit 16;
   0 skips it).

`--split validation` runs stages 1 and 2 on the validation split instead: settings and
checkpoints are chosen there, so that the test split is only reported.

DIR/report.json holds the three stages and the demo's targets, each checked; DIR/report.md
the tables; PNGs: accuracy_vs_n.png (per CA-TTS run), reliability_{sft,cdrl}.png,
confidence_under_noise.png. Each stage resumes (a finished one is read back, a CA-TTS run
skips finished problems). `--render_readme FILE` rewrites FILE's demo-table block (the
README's tables live in docs/results.md) from report.json, and runs nothing.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time

from absl import flags

from catts_jax import cli

ROOT = pathlib.Path(__file__).parents[1]
METHODS = "catts,majority,deepconf,best-of-n,greedy"
NOISE = ("vcd_noise", 1.0)


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("out", None, "output directory", required=True, flag_values=fv)
  flags.DEFINE_string(
    "sft", str(ROOT / "checkpoints" / "synthetic_sft"), "the SFT checkpoint", flag_values=fv
  )
  flags.DEFINE_string(
    "cdrl", str(ROOT / "checkpoints" / "synthetic_cdrl"), "the CDRL checkpoint", flag_values=fv
  )
  flags.DEFINE_string("data_dir", None, "tfds cache for the synthetic dataset", flag_values=fv)
  flags.DEFINE_enum("split", "test", ["test", "validation"], "synthetic split of stages 1, 2", flag_values=fv)
  # Both stages default to the whole test split (256 problems): on 128, one problem is 0.8
  # points, as large as the methods' differences.
  flags.DEFINE_integer("calibration_size", None, "first K problems for stage 1", flag_values=fv)
  flags.DEFINE_integer("limit", None, "first K problems for CA-TTS (stage 2)", flag_values=fv)
  flags.DEFINE_string("n", "1,2,4,8,16", "sample counts N of stage 2", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 64, "decode length of every stage", flag_values=fv)
  # infer.catts' default; CA-TTS's accuracy on validation chose it over 1.0 and 1.3 for the
  # bundled checkpoint (configs/synthetic_tiny_cdrl.py has the runs).
  flags.DEFINE_float("temperature", 0.7, "sampling temperature of stages 2 and 3", flag_values=fv)
  flags.DEFINE_string("mathvision", str(ROOT.parent / "shared" / "data" / "math-vision-testmini"),
                      "the Math-Vision testmini release directory", flag_values=fv)  # fmt: skip
  flags.DEFINE_integer("mv_limit", 16, "first K Math-Vision problems of stage 3; 0 skips it", flag_values=fv)
  flags.DEFINE_string(
    "render_readme", None, "only rewrite this Markdown file's demo-table block from --out", flag_values=fv
  )


# --- stage 1: calibration before / after CDRL ----------------------------------------------------


def calibration(name: str, ckpt: str, examples: list[dict], max_new_tokens: int, out: pathlib.Path) -> dict:
  import numpy as np

  from catts_jax.eval import greedy, metrics, report
  from catts_jax.policy import Policy

  rows = greedy.greedy_eval(
    Policy.from_pretrained(ckpt), examples, "synthetic", max_new_tokens=max_new_tokens, perturbation=NOISE
  )
  conf = np.array([r["confidence"] for r in rows])
  correct = np.array([r["correct"] for r in rows], float)
  report.plot_reliability(conf, correct, out / f"reliability_{name}.png", title=f"{name}, greedy")
  tasks = sorted({ex["category"] for ex in examples})
  return {
    "checkpoint": ckpt,
    **greedy.summary(rows),
    "ece": metrics.ece(conf, correct),
    "auroc": metrics.auroc(conf, correct),
    "by_task": {
      task: greedy.summary([r for r, ex in zip(rows, examples) if ex["category"] == task]) for task in tasks
    },
  }


# --- stage 2 and 3: CA-TTS (catts_jax.tts.run, as infer.catts runs it) ------------------------------


def catts_run(out: pathlib.Path, args, **inputs) -> dict:
  """CA-TTS and the baselines on the CDRL checkpoint with configs/catts.py, the policy as
  its own Expert; report.json as written (read back, as a resumed demo reads it)."""
  from tqdm import tqdm

  from catts_jax.tts import run
  from configs import catts as catts_config

  cfg = catts_config.get_config()
  cfg.sampling.max_new_tokens = args.max_new_tokens
  cfg.sampling.temperature = args.temperature
  cfg.reflection.max_new_tokens = args.max_new_tokens
  try:
    job = run.prepare(cfg, ckpt=args.cdrl, out=out, methods=METHODS, expert="self", **inputs)
  except (ValueError, FileNotFoundError) as err:
    raise SystemExit(f"error: {err}") from None
  with tqdm(total=len(job.examples), desc="catts", unit="problem") as bar:
    job.run(progress=bar.update)
  return json.loads((out / "report.json").read_text())


def targets(cal: dict, syn: dict) -> dict:
  """The demo's claims, each with its measured figures and whether it holds."""
  from catts_jax.eval.metrics import drop_ratio

  n = max(int(k) for k in syn["accuracy"]["majority"])
  majority_top = syn["accuracy"]["majority"][str(n)]
  beta = {m: syn["slope"][m]["beta"] for m in ("catts", "majority")}
  reached = [p for p in syn.get("adaptive", {}).get("points", []) if p["accuracy"] >= majority_top]
  fewest = min((p["mean_samples"] for p in reached), default=None)
  ratio = drop_ratio(cal["cdrl"]["confidence_drop"], cal["sft"]["confidence_drop"])
  return {
    "drop_ratio_cdrl_vs_sft": {"value": ratio, "target": ">= 2", "holds": ratio >= 2},
    "accuracy_cdrl_vs_sft": {
      "value": [cal["cdrl"]["accuracy"], cal["sft"]["accuracy"]],
      "target": "CDRL not lower",
      "holds": cal["cdrl"]["accuracy"] >= cal["sft"]["accuracy"],
    },
    "beta_catts_vs_majority": {
      # As slopes, not their ratio: a ratio to a flat or falling majority curve means nothing.
      "value": [beta["catts"], beta["majority"]],
      "target": "CA-TTS >= 1.5x majority's (majority's > 0)",
      "holds": beta["majority"] > 0 and beta["catts"] >= 1.5 * beta["majority"],
    },
    f"catts_vs_majority_at_{n}": {
      "value": [syn["accuracy"]["catts"][str(n)], majority_top],
      "target": "CA-TTS higher",
      "holds": syn["accuracy"]["catts"][str(n)] > majority_top,
    },
    "adaptive_samples_to_majority_top": {
      "value": fewest,
      "target": f"< {n} mean samples for majority@{n} accuracy",
      "holds": fewest is not None and fewest < n,
    },
  }


# --- the report ---------------------------------------------------------------------------------


def markdown(result: dict) -> str:
  from catts_jax.eval import report
  from catts_jax.tts.summary import columns

  cal_rows = [
    {"checkpoint": name, **{k: v for k, v in r.items() if k != "checkpoint"}}
    for name, r in result["calibration"].items()
  ]
  task_rows = [
    {"checkpoint": name, "task": task, **summary}
    for name, r in result["calibration"].items()
    for task, summary in r["by_task"].items()
  ]
  cal_cols = [
    "checkpoint",
    "n",
    "accuracy",
    "ece",
    "auroc",
    "confidence",
    "confidence_perturbed",
    "confidence_drop",
  ]
  syn, mv = result["synthetic"], result["mathvision"]
  ns = sorted(int(k) for k in syn["accuracy"]["majority"])
  adaptive = [
    {"cap N": p["cap"], "mean samples": p["mean_samples"], "accuracy %": 100 * p["accuracy"]}
    for p in syn.get("adaptive", {}).get("points", [])
  ]
  checks = [
    {"target": name, "measured": t["value"], "wanted": t["target"], "holds": "yes" if t["holds"] else "NO"}
    for name, t in result["targets"].items()
  ]
  split = result["split"]
  task_cols = ["checkpoint", "task", "n", "accuracy", "confidence", "confidence_perturbed", "confidence_drop"]
  return "\n".join(
    [
      f"Calibration on the synthetic {split} split ({cal_rows[0]['n']} problems, greedy; drop = confidence on "
      "the image minus under VCD noise at full strength, same answer):",
      "",
      report.markdown_table(cal_rows, cal_cols),
      "",
      "Per task:",
      "",
      report.markdown_table(task_rows, task_cols),
      "",
      f"CA-TTS and baselines, CDRL checkpoint, first {syn['problems']} synthetic {split} problems, "
      f"`--expert self`, samples at temperature {syn['temperature']} (accuracy in %, ECE/AUROC at the "
      "largest N, beta = points per doubling of N):",
      "",
      report.markdown_table(syn["table"], columns(ns)),
      "",
      *single_samples(syn, ns[-1]),
      "catts-adaptive (stops a problem once its confidence-weighted vote margin is reached):",
      "",
      report.markdown_table(adaptive),
      "",
      "Targets:",
      "",
      report.markdown_table(checks),
      "",
      *mathvision_lines(mv),
      f"Wall time {result['seconds']['total']:.0f} s, summed over the runs that wrote it ("
      + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items() if k != "total")
      + ").",
    ]
  )


def mathvision_lines(mv: dict | None) -> list[str]:
  from catts_jax.eval import report
  from catts_jax.tts.summary import columns

  if not mv:
    return []
  ns = sorted(int(k) for k in mv["accuracy"]["majority"])
  return [
    f"Math-Vision testmini, first {mv['problems']} problems ({mv['errors']} errors), same checkpoint "
    "(a model trained only on the synthetic shapes: chance-level answers expected):",
    "",
    report.markdown_table(mv["table"], columns(ns)),
    "",
  ]


def single_samples(syn: dict, n: int) -> list[str]:
  """What the sampled methods vote over (the CA-TTS report's line), overall and per task at N = n,
  when the run graded its samples."""
  from catts_jax.eval import report
  from catts_jax.tts.summary import category_rows, pool_line

  one = syn.get("single_samples")
  if not one:
    return []
  return [
    f"{pool_line(one)} The greedy answer is right {100 * syn['accuracy']['greedy']['1']:.1f}% of the time; "
    "0.5 is a chance ranking.",
    "",
    f"Per task at N={n} (accuracy in %; one sample, any right and within-problem AUROC as above):",
    "",
    report.markdown_table(category_rows(syn, METHODS.split(","))),
    "",
  ]


def run(args) -> dict:
  from catts_jax import data, runs
  from catts_jax.eval import report

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  began = time.perf_counter()
  # Seconds per stage, summed over the runs that wrote `out`: a resumed run reads finished
  # work back in no time, and adds what it spends to what the earlier runs spent (a killed
  # run's unfinished stage is not counted).
  spent = out / "seconds.json"
  seconds = json.loads(spent.read_text()) if spent.is_file() else {}

  def add(stage: str, since: float) -> None:
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - since
    runs.write_json(spent, seconds)

  ds = data.load("synthetic", data_dir=args.data_dir, split=args.split)

  t = time.perf_counter()
  examples = ds[: args.calibration_size]
  done = out / "calibration.json"
  cal = json.loads(done.read_text()) if done.is_file() else {}
  for name, ckpt in (("sft", args.sft), ("cdrl", args.cdrl)):
    old = cal.get(name, {})
    if (old.get("checkpoint"), old.get("split"), old.get("n")) != (ckpt, args.split, len(examples)):
      cal[name] = {**calibration(name, ckpt, examples, args.max_new_tokens, out), "split": args.split}
      runs.write_json(done, cal)
  strengths = [0.0, NOISE[1]]
  report.plot_perturbation(
    strengths,
    {name: {"confidence": [r["confidence"], r["confidence_perturbed"]]} for name, r in cal.items()},
    out / "confidence_under_noise.png",
    xlabel="VCD noise strength (the same greedy answer)",
    title="Confidence on the image vs under noise",
  )
  add("calibration", t)

  t = time.perf_counter()
  syn = catts_run(out / "catts_synthetic", args, benchmark="synthetic", split=args.split, ns=args.n,
                  limit=args.limit, data_dir=args.data_dir)  # fmt: skip
  add("catts_synthetic", t)

  mv = None
  if args.mv_limit:
    t = time.perf_counter()
    mv = catts_run(out / "catts_mathvision", args, benchmark="mathvision", data_path=args.mathvision,
                   limit=args.mv_limit, ns="1,2,4")  # fmt: skip
    add("catts_mathvision", t)
  add("total", began)

  keep = (
    "problems",
    "errors",
    "accuracy",
    "calibration",
    "slope",
    "adaptive",
    "table",
    "modules",
    "single_samples",
    "by_category",
    "expert_calls",
  )
  result = {
    "split": args.split,
    "calibration": cal,
    "synthetic": {
      **{k: syn[k] for k in keep if k in syn},
      "temperature": syn["config"]["sampling"]["temperature"],
    },
    "mathvision": None if mv is None else {k: mv[k] for k in keep if k in mv},
    "seconds": seconds,
  }
  result["targets"] = targets(cal, syn)
  runs.write_json(out / "report.json", result)
  runs.write_text(out / "report.md", "# catts-jax demo\n\n" + markdown(result) + "\n")
  return result


def main(argv=None) -> int:
  args = cli.parse(define, argv, __doc__)
  if args.render_readme:
    from catts_jax import runs

    source = f"{args.out}/report.json"
    runs.render_block(
      args.render_readme, "demo-table", source, markdown(json.loads(pathlib.Path(source).read_text()))
    )
    return 0
  # The tiny policy is its own Expert: its planner/voter/critic text rarely parses, and every
  # failed call is recorded in results.jsonl and counted in the report; no need for a warning
  # line per call. A process-wide setting, so it belongs to the program, not to run().
  logging.getLogger("catts_jax.tts.expert").setLevel(logging.ERROR)
  result = run(args)
  print(markdown(result))
  print(f"\nwrote {pathlib.Path(args.out) / 'report.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
