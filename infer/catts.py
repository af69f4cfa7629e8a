"""CA-TTS and its baselines on a benchmark, every method on the same N samples per problem.

    python -m infer.catts --ckpt CKPT --benchmark mathvision --data DIR [--split S] [--limit K] \\
        --n 1,2,4,8,16,32 --methods catts,majority,deepconf,deepconf-online,best-of-n,greedy,vcd \\
        --expert http://127.0.0.1:8000/v1 --out DIR [--config configs/catts.py] [--config.tts.tau=0.3]

--expert: hf:<model-id> (HF Inference Providers, HF_TOKEN), http(s)://host[:port]/v1 (any
OpenAI-compatible server), self (the policy) or none. Writes DIR/results.jsonl (one row per
problem; a rerun with the same --out skips finished problems), DIR/report.json, DIR/report.md
and DIR/accuracy_vs_n.png, and prints the table: accuracy per method and N, ECE and AUROC at
the largest N, and the slope beta (accuracy points per doubling of N). The report is built from
results.jsonl alone. catts-adaptive replays CA-TTS with early stopping: at each N of the list
(a round), a problem stops once its confidence-weighted vote margin reaches
tts.adaptive_margin (after tts.adaptive_min_samples); its point is (mean samples used,
accuracy) for each cap N.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import pathlib
import sys
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from catts_jax.eval import metrics, report
from catts_jax.tts import voting
from catts_jax.tts.pipeline import METHODS, SAMPLED

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "catts.py"
# What a resumed run must share with the rows already written (--limit may grow).
SETTINGS = ("checkpoint", "benchmark", "split", "ns", "methods", "expert", "config")


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ckpt", required=True, help="HF checkpoint directory (or a train/ run: its final/ export)")
  p.add_argument("--benchmark", required=True)
  p.add_argument("--data", default=None, help="the benchmark's release directory (synthetic: none)")
  p.add_argument("--split", default=None)
  p.add_argument("--data-dir", default=None, help="where built datasets are cached")
  p.add_argument("--limit", type=int, default=None, help="the first K problems")
  p.add_argument("--n", default="1,2,4,8,16,32", help="sample counts N (the largest is drawn once)")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--expert", default="none", help="hf:<model-id> | http(s)://host[:port]/v1 | self | none")
  p.add_argument("--config", default=str(CONFIG), help="an ml_collections config file")
  p.add_argument("--out", required=True)
  return p.parse_known_args(argv)


# --- config ---------------------------------------------------------------------------------


def load_config(path: str, overrides: list[str]):
  """get_config() of the file, with `--config.a.b=value` overrides (Python literals, else
  strings); unknown keys and wrong types are errors."""
  spec = importlib.util.spec_from_file_location("catts_config", path)
  if spec is None or not pathlib.Path(path).is_file():
    raise ValueError(f"config file {path} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  for item in overrides:
    key, sep, text = item.removeprefix("--config.").partition("=")
    if not item.startswith("--config.") or not sep:
      raise ValueError(f"unrecognised argument {item!r} (config overrides look like --config.tts.tau=0.3)")
    *parents, name = key.split(".")
    node = cfg
    for part in parents:
      if part not in node:
        raise ValueError(f"unknown config key {key!r}")
      node = node[part]
    if name not in node:
      raise ValueError(f"unknown config key {key!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    try:
      node[name] = value
    except TypeError:
      node[name] = text  # a string field given something that parses as a number
  voting.TTSConfig(**cfg.tts)  # validate
  return cfg


def resolve_ckpt(path: str) -> pathlib.Path:
  ckpt = pathlib.Path(path).expanduser()
  if (ckpt / "config.json").is_file():
    return ckpt
  if (ckpt / "final" / "config.json").is_file():  # a train/ output directory
    return ckpt / "final"
  raise ValueError(
    f"--ckpt {ckpt}: no config.json; pass an HF checkpoint directory (train/ runs export theirs to DIR/final)"
  )


def parse_ns(text: str) -> list[int]:
  try:
    ns = sorted({int(x) for x in text.split(",") if x.strip()})
  except ValueError:
    raise ValueError(f"--n {text!r}: expected comma-separated positive integers") from None
  if not ns or ns[0] < 1:
    raise ValueError(f"--n {text!r}: expected comma-separated positive integers")
  return ns


def check_settings(out: pathlib.Path, settings: dict[str, Any]) -> None:
  """The first run writes DIR/run.json; a resumed run must match it (else rows would mix)."""
  path = out / "run.json"
  if path.is_file():
    old = json.loads(path.read_text())
    diff = [k for k in SETTINGS if old.get(k) != settings.get(k)]
    if diff:
      raise ValueError(f"{out} holds a run with other {', '.join(diff)}; use another --out")
    return
  out.mkdir(parents=True, exist_ok=True)
  report.write_json(path, settings)


# --- the report -----------------------------------------------------------------------------


def _records(rows: list[dict], method: str, n: int) -> list[dict]:
  if method in SAMPLED:
    return [r["methods"][method][str(n)] for r in rows]
  return [r["methods"][method] for r in rows]


def adaptive_points(rows: list[dict], ns: list[int], tts: voting.TTSConfig) -> list[dict[str, float]]:
  """catts-adaptive per cap N: a problem stops at the first round n <= cap where
  `voting.should_stop` holds on the confidence-weighted vote of its first n samples, and
  answers with CA-TTS at that n."""
  points = []
  for cap in ns:
    used, correct = [], []
    for r in rows:
      samples = r["samples"]
      stop = cap
      for n in [m for m in ns if m <= cap]:
        table = voting.confidence_weighted(
          [s["answer"] for s in samples[:n]], [s[tts.sc_confidence] for s in samples[:n]]
        )
        if voting.should_stop(table, tts.adaptive_margin, tts.adaptive_min_samples, n):
          stop = n
          break
      used.append(stop)
      correct.append(r["methods"]["catts"][str(stop)]["correct"])
    points.append({"cap": cap, "mean_samples": float(np.mean(used)), "accuracy": float(np.mean(correct))})
  return points


def expert_summary(rows: list[dict]) -> dict[str, dict[str, Any]]:
  out: dict[str, dict[str, Any]] = {}
  for r in rows:
    for c in r.get("expert_calls", []):
      s = out.setdefault(
        c["role"],
        {"calls": 0, "ok": 0, "failed": 0, "cached": 0, "fallback": 0, "latency_s": [], "errors": Counter()},
      )
      s["calls"] += 1
      s["cached"] += bool(c.get("cached"))
      s["ok"] += bool(c["ok"])
      s["failed"] += not c["ok"]
      s["fallback"] += bool(c.get("fallback"))
      if not c.get("cached"):
        s["latency_s"].append(c["latency_s"])
      if c.get("error"):
        s["errors"][c["error"][:60]] += 1
  for s in out.values():
    lat = s.pop("latency_s")
    s["mean_latency_s"] = float(np.mean(lat)) if lat else None
    s["errors"] = dict(s["errors"].most_common(5))
  return out


def sample_pool(rows: list[dict], weight: str) -> dict[str, Any]:
  """What voting has to work with, over the drawn samples (N of the largest): how often one
  sample is right, how often any is (no vote picks better), and how well the vote weight ranks
  a right sample above a wrong one of the same problem (the only ranking a vote can use)."""
  groups = [([x[weight] for x in r["samples"]], [x["correct"] for x in r["samples"]]) for r in rows]
  graded = [c for _, y in groups for c in y]
  if not graded:
    return {}
  return {
    "samples": len(graded),
    "accuracy": float(np.mean(graded)),
    "any_right": float(np.mean([any(y) for _, y in groups])),
    "mixed_problems": sum(0 < sum(y) < len(y) for _, y in groups),
    "weight": weight,
    "within_problem_auroc": metrics.within_group_auroc(groups),
  }


def summarize(
  rows: list[dict],
  ns: list[int],
  methods: list[str],
  tts: voting.TTSConfig,
  categories: dict[str, str] | None = None,
) -> dict[str, Any]:
  """report.json's measurements, over the problems without errors (their count is reported);
  `categories` (problem id -> category) adds a breakdown at the largest N."""
  ok = [r for r in rows if "error" not in r]
  accuracy, calibration, slope = {}, {}, {}
  for m in methods:
    accuracy[m], calibration[m] = {}, {}
    for n in ns:
      recs = _records(ok, m, n)
      correct = np.array([x["correct"] for x in recs], float)
      conf = np.array([x["confidence"] for x in recs], float)
      accuracy[m][str(n)] = float(correct.mean()) if recs else float("nan")
      calibration[m][str(n)] = {
        "ece": metrics.ece(conf, correct) if recs else float("nan"),
        "auroc": metrics.auroc(conf, correct) if recs else float("nan"),
      }
    if m in SAMPLED and len(ns) >= 2 and ok:
      grid = [[x["correct"] for x in _records(ok, m, n)] for n in ns]
      ci = metrics.scaling_slope_ci(ns, grid)
      slope[m] = {"beta": ci["beta"], "low": ci["low"], "high": ci["high"]}
  summary: dict[str, Any] = {
    "problems": len(rows),
    "errors": len(rows) - len(ok),
    "error_ids": [r["id"] for r in rows if "error" in r][:20],
    "accuracy": accuracy,
    "calibration": calibration,
    "slope": slope,
  }
  if "catts" in methods and tts.adaptive and ok:
    summary["adaptive"] = {
      "margin": tts.adaptive_margin,
      "min_samples": tts.adaptive_min_samples,
      "points": adaptive_points(ok, ns, tts),
    }
  if "deepconf-online" in methods and ok:
    summary["deepconf_online"] = {
      str(n): {
        "token_savings": float(np.mean([x["token_savings"] for x in _records(ok, "deepconf-online", n)])),
        "tokens_per_problem": float(np.mean([x["tokens"] for x in _records(ok, "deepconf-online", n)])),
      }
      for n in ns
    }
  if "catts" in methods and ok:
    top = _records(ok, "catts", ns[-1])
    ran = Counter(mod["module"] for x in top for mod in x["modules"] if mod["ran"])
    summary["modules"] = {
      "n": ns[-1],
      "planned_by_expert": float(np.mean([x["plan"]["by"] == "expert" for x in top])),
      "ran": dict(ran),
    }
  pool = sample_pool(ok, tts.sc_confidence)
  if pool:
    summary["single_samples"] = pool
  if categories and any(categories.values()) and ok:
    by_category = defaultdict(list)
    for r in ok:
      by_category[categories.get(str(r["id"]), "")].append(r)
    summary["by_category"] = {
      cat: {
        "problems": len(rows_c),
        "accuracy": {m: float(np.mean([x["correct"] for x in _records(rows_c, m, ns[-1])])) for m in methods},
        "single_samples": sample_pool(rows_c, tts.sc_confidence),
      }
      for cat, rows_c in sorted(by_category.items())
    }
  summary["expert_calls"] = expert_summary(ok)
  summary["table"] = table_rows(summary, ns, methods)
  return summary


def table_rows(summary: dict[str, Any], ns: list[int], methods: list[str]) -> list[dict[str, Any]]:
  """Accuracy (%) per method and N, ECE / AUROC at the largest N, slope beta and its bootstrap
  interval over problems."""
  rows = []
  for m in methods:
    row: dict[str, Any] = {"method": m}
    row.update({f"N={n}": 100 * summary["accuracy"][m][str(n)] for n in ns})
    row.update(summary["calibration"][m][str(ns[-1])])
    fit = summary["slope"].get(m)
    row["beta"] = fit["beta"] if fit else "-"
    row["beta 95% CI"] = f"[{fit['low']:.2f}, {fit['high']:.2f}]" if fit else "-"
    rows.append(row)
  return rows


def fraction(x: float | None) -> str:
  """Two decimals; "n/a" for an undefined figure (NaN, or null once read back from JSON)."""
  return "n/a" if x is None or x != x else f"{x:.2f}"


def pool_line(pool: dict[str, Any]) -> str:
  return (
    f"Single samples: {100 * pool['accuracy']:.1f}% right ({pool['samples']} samples graded); "
    f"{100 * pool['any_right']:.1f}% of problems have a right one; within a problem, `{pool['weight']}` "
    f"ranks a right sample above a wrong one {fraction(pool['within_problem_auroc'])} of the time "
    f"({pool['mixed_problems']} {'problem has' if pool['mixed_problems'] == 1 else 'problems have'} both)."
  )


def category_rows(summary: dict[str, Any], methods: list[str]) -> list[dict[str, Any]]:
  """Accuracy (%) at the largest N per category, beside its sample pool (`sample_pool`)."""
  rows = []
  for cat, c in summary["by_category"].items():
    row = {"category": cat or "-", "problems": c["problems"], **{m: 100 * c["accuracy"][m] for m in methods}}
    if pool := c["single_samples"]:  # none when no method samples
      row["one sample %"] = 100 * pool["accuracy"]
      row["any right %"] = 100 * pool["any_right"]
      row["within-problem auroc"] = pool["within_problem_auroc"]
    rows.append(row)
  return rows


def columns(ns: list[int]) -> list[str]:
  return ["method", *(f"N={n}" for n in ns), "ece", "auroc", "beta", "beta 95% CI"]


def write_report(out: pathlib.Path, summary: dict[str, Any], ns: list[int], methods: list[str]) -> None:
  report.write_json(out / "report.json", summary)
  curves = {}
  for m in methods:
    acc = [100 * summary["accuracy"][m][str(n)] for n in ns]
    curves[m] = (ns, acc) if m in SAMPLED else ([1], acc[:1])  # greedy / VCD: one decode
  if "adaptive" in summary:
    # Caps that stop every problem at the same rounds give the same point: plot it once.
    points = {p["mean_samples"]: 100 * p["accuracy"] for p in summary["adaptive"]["points"]}
    curves["catts-adaptive"] = (sorted(points), [points[x] for x in sorted(points)])
  title = f"{summary['benchmark']} ({summary['problems'] - summary['errors']} problems)"
  report.plot_scaling(curves, out / "accuracy_vs_n.png", title=title)
  parts = [
    f"# CA-TTS: {title}",
    "",
    f"Checkpoint `{summary['checkpoint']}`, expert `{summary['expert']}`; accuracy in %, ECE and AUROC "
    f"at N={ns[-1]}, beta = accuracy points per doubling of N.",
    "",
    report.markdown_table(summary["table"], columns(ns)),
  ]
  if "single_samples" in summary:
    parts += ["", pool_line(summary["single_samples"])]
  if "by_category" in summary:
    parts += ["", f"## by category (N={ns[-1]})", "", report.markdown_table(category_rows(summary, methods))]
  if "adaptive" in summary:
    a = summary["adaptive"]
    rows = [
      {"cap N": p["cap"], "mean samples": p["mean_samples"], "accuracy %": 100 * p["accuracy"]}
      for p in a["points"]
    ]
    parts += [
      "",
      f"## catts-adaptive (stop at margin >= {a['margin']}, at least {a['min_samples']} samples)",
      "",
    ]
    parts.append(report.markdown_table(rows))
  if "deepconf_online" in summary:
    rows = [{"N": n, **v} for n, v in summary["deepconf_online"].items()]
    parts += ["", "## deepconf-online: tokens generated", "", report.markdown_table(rows)]
  if summary["expert_calls"]:
    rows = [
      {"role": role, **{k: v for k, v in s.items() if k != "errors"}}
      for role, s in summary["expert_calls"].items()
    ]
    parts += ["", "## expert calls", "", report.markdown_table(rows)]
  (out / "report.md").write_text("\n".join(parts) + "\n", encoding="utf-8")


# --- main -------------------------------------------------------------------------------------


def main(argv=None) -> int:
  args, rest = parse_args(argv)
  out = pathlib.Path(args.out)
  try:
    cfg = load_config(args.config, rest)
    ns = parse_ns(args.n)
    methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
      raise ValueError(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}")
    ckpt = resolve_ckpt(args.ckpt)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  tts = voting.TTSConfig(**cfg.tts)

  from catts_jax import data
  from catts_jax.policy import Policy
  from catts_jax.scoring import ConfidenceConfig
  from catts_jax.tts.expert import RemoteExpert, make_expert
  from catts_jax.tts.pipeline import PolicyOps, Runner

  e = cfg.expert
  expert_options = dict(
    timeout_s=e.timeout_s, max_retries=e.max_retries, backoff_s=e.backoff_s, max_backoff_s=e.max_backoff_s,
    model=e.model, provider=e.provider, api_key_env=e.api_key_env, seed=cfg.seed,
  )  # fmt: skip
  try:
    expert = None if args.expert.strip().lower() == "self" else make_expert(args.expert, **expert_options)
    if isinstance(expert, RemoteExpert):
      import huggingface_hub.constants

      if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ValueError(
          "HF_HUB_OFFLINE is set, which blocks huggingface_hub's client: unset it for --expert"
        )
    dataset = data.load(args.benchmark, manual_dir=args.data, data_dir=args.data_dir, split=args.split)
  except (ValueError, FileNotFoundError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  examples = dataset[: min(len(dataset), args.limit or len(dataset))]
  settings = {
    "checkpoint": str(ckpt),
    "benchmark": args.benchmark,
    "split": dataset.split,
    "ns": ns,
    "methods": methods,
    "expert": args.expert if expert is None else expert.name,  # a public name: no credentials
    "config": cfg.to_dict(),
  }
  try:
    check_settings(out, settings)
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2

  confidence = ConfidenceConfig(window=tts.deepconf_window)
  policy = Policy.from_pretrained(ckpt, dtype=cfg.dtype, confidence=confidence)
  if args.expert.strip().lower() == "self":
    expert = make_expert("self", policy, **expert_options)
  runner = Runner(
    PolicyOps(policy, args.benchmark, cfg), examples, ns=ns, methods=methods, expert=expert, cfg=cfg
  )

  from tqdm import tqdm

  with tqdm(total=len(examples), desc="catts", unit="problem") as bar:
    rows = runner.run(out, progress=bar.update)
  wanted = {str(ex["id"]) for ex in examples}
  rows = [r for r in rows if str(r["id"]) in wanted]
  categories = {str(ex["id"]): ex.get("category") or "" for ex in examples}
  summary = {**settings, **summarize(rows, ns, methods, tts, categories)}
  write_report(out, summary, ns, methods)
  print(report.text_table(summary["table"], columns(ns)))
  if summary["errors"]:
    print(f"\n{summary['errors']} problem(s) failed: {', '.join(summary['error_ids'])}", file=sys.stderr)
  print(f"\nwrote {out / 'report.json'}, {out / 'report.md'}, {out / 'accuracy_vs_n.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
