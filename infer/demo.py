"""The demo: the bundled tiny checkpoints' calibration and test-time scaling, on CPU in minutes.

    python -m infer.demo --out runs/demo [--sft checkpoints/synthetic_sft] \\
        [--cdrl checkpoints/synthetic_cdrl] [--split test] [--limit K] [--render-readme README.md]

1. Before/after CDRL: greedy answers of the SFT and the CDRL checkpoint on the synthetic test
   split, each answer scored on its image and, teacher-forced, under VCD noise at full
   strength (the image is gone): accuracy, ECE, AUROC, confidence drop.
2. CA-TTS and its baselines on the CDRL checkpoint (infer.catts, `--expert self`, samples at
   `--temperature`, 0.7), N = 1..16,
   on the test split (the first --limit problems if given).
3. The real-benchmark path: the CDRL checkpoint through Math-Vision testmini (--mv-limit 16;
   0 skips it).

`--split validation` runs stages 1 and 2 on the validation split instead: settings and
checkpoints are chosen there, so that the test split is only reported.

DIR/report.json holds the three stages and the demo's targets, each checked; DIR/report.md
the tables; PNGs: accuracy_vs_n.png (per infer.catts run), reliability_{sft,cdrl}.png,
confidence_under_noise.png. Each stage resumes (a finished one is read back, infer.catts
skips finished problems). `--render-readme` writes the README's demo block from report.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).parents[1]
METHODS = "catts,majority,deepconf,best-of-n,greedy"
NOISE = ("vcd_noise", 1.0)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True)
  p.add_argument("--sft", default=str(ROOT / "checkpoints" / "synthetic_sft"))
  p.add_argument("--cdrl", default=str(ROOT / "checkpoints" / "synthetic_cdrl"))
  p.add_argument("--data-dir", default=None, help="tfds cache for the synthetic dataset")
  p.add_argument(
    "--split", default="test", choices=("test", "validation"), help="synthetic split of stages 1, 2"
  )
  # Both stages default to the whole test split (256 problems): on 128, one problem is 0.8
  # points, as large as the methods' differences.
  p.add_argument("--calibration-size", type=int, default=None, help="first K problems for stage 1")
  p.add_argument("--limit", type=int, default=None, help="first K problems for CA-TTS (stage 2)")
  p.add_argument("--n", default="1,2,4,8,16", help="sample counts N of stage 2")
  p.add_argument("--max-new-tokens", type=int, default=64)
  # infer.catts' default; CA-TTS's accuracy on validation chose it over 1.0 and 1.3 for the
  # bundled checkpoint (configs/synthetic_tiny_cdrl.py has the runs).
  p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of stages 2 and 3")
  p.add_argument("--mathvision", default=str(ROOT.parent / "shared" / "data" / "math-vision-testmini"))
  p.add_argument("--mv-limit", type=int, default=16, help="0: skip stage 3")
  p.add_argument("--render-readme", default=None, help="only rewrite this README's demo block from --out")
  return p.parse_args(argv)


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


# --- stage 2 and 3: infer.catts -----------------------------------------------------------------


def catts_run(out: pathlib.Path, argv: list[str]) -> dict:
  from infer import catts

  if catts.main([*argv, "--out", str(out)]) != 0:
    raise SystemExit(f"infer.catts failed (see above); its rows so far are in {out}")
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
  from infer.catts import columns

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
  from infer.catts import columns

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
  """What the sampled methods vote over (infer.catts' line), overall and per task at N = n,
  when the run graded its samples."""
  from catts_jax.eval import report
  from infer.catts import category_rows, pool_line

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
  from catts_jax import data
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
    report.write_json(spent, seconds)

  ds = data.load("synthetic", data_dir=args.data_dir, split=args.split)

  t = time.perf_counter()
  examples = ds[: args.calibration_size]
  done = out / "calibration.json"
  cal = json.loads(done.read_text()) if done.is_file() else {}
  for name, ckpt in (("sft", args.sft), ("cdrl", args.cdrl)):
    old = cal.get(name, {})
    if (old.get("checkpoint"), old.get("split"), old.get("n")) != (ckpt, args.split, len(examples)):
      cal[name] = {**calibration(name, ckpt, examples, args.max_new_tokens, out), "split": args.split}
      report.write_json(done, cal)
  strengths = [0.0, NOISE[1]]
  report.plot_perturbation(
    strengths,
    {name: {"confidence": [r["confidence"], r["confidence_perturbed"]]} for name, r in cal.items()},
    out / "confidence_under_noise.png",
    xlabel="VCD noise strength (the same greedy answer)",
    title="Confidence on the image vs under noise",
  )
  add("calibration", t)

  common = ["--methods", METHODS, "--expert", "self", f"--config.sampling.max_new_tokens={args.max_new_tokens}",
            f"--config.sampling.temperature={args.temperature}",
            f"--config.reflection.max_new_tokens={args.max_new_tokens}"]  # fmt: skip
  t = time.perf_counter()
  syn_argv = ["--ckpt", args.cdrl, "--benchmark", "synthetic", "--split", args.split, "--n", args.n]
  if args.limit:
    syn_argv += ["--limit", str(args.limit)]
  if args.data_dir:
    syn_argv += ["--data-dir", args.data_dir]
  syn = catts_run(out / "catts_synthetic", syn_argv + common)
  add("catts_synthetic", t)

  mv = None
  if args.mv_limit:
    t = time.perf_counter()
    mv_argv = ["--ckpt", args.cdrl, "--benchmark", "mathvision", "--data", args.mathvision,
               "--limit", str(args.mv_limit), "--n", "1,2,4"]  # fmt: skip
    mv = catts_run(out / "catts_mathvision", mv_argv + common)
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
  report.write_json(out / "report.json", result)
  (out / "report.md").write_text("# catts-jax demo\n\n" + markdown(result) + "\n", encoding="utf-8")
  return result


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.render_readme:
    from catts_jax.eval import report

    result = json.loads((pathlib.Path(args.out) / "report.json").read_text())
    report.replace_block(args.render_readme, "demo-table", f"`{args.out}/report.json`\n\n{markdown(result)}")
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
