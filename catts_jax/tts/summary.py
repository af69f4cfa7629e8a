"""What a CA-TTS run measured, built from its results.jsonl rows alone: accuracy per method
and N, calibration, the scaling slope, catts-adaptive's early stopping, the sample pool the
votes draw on, Expert calls; written as report.json, report.md and accuracy_vs_n.png. Also
the module-by-module table of a run with the ablation methods (`module_steps`: each row adds
one module, with its paired difference to the row above) and parsed replies per Expert role.

A row is one problem: {"id", "samples": [{"answer", "correct", <confidences>}, ...] (N of the
largest), "methods": {sampled method: {str(N): record}, greedy/vcd: record}, "expert_calls"}
or {"id", "error"}; a record has at least "correct" and "confidence".
"""

from __future__ import annotations

import pathlib
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from catts_jax import runs
from catts_jax.eval import metrics, report
from catts_jax.tts import voting
from catts_jax.tts.methods import SAMPLED
from catts_jax.tts.planner import SELF_REFLECTION, VISUAL_SELF_CHECK

# Each row adds one module to the row before it (catts: the Planner choosing the order).
MODULE_STEPS = (
  ("majority", "-"),
  ("sc", "confidence-weighted votes"),
  ("sc+voter", "Voter"),
  ("sc+voter+sr", "Self-Reflection"),
  ("sc+voter+sr+sck", "Visual Self-Check"),
  ("catts", "Planner"),
)


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


def expert_lines(calls: dict[str, dict[str, Any]]) -> list[str]:
  """One line per Expert role from `expert_summary`: calls sent (and answers reused), ok,
  failed, fallbacks and the most common error, so failures show where a run ends, not only
  inside report.json."""
  lines = []
  for role, s in calls.items():
    line = (
      f"expert {role}: {s['calls']} calls (+{s['cached']} reused), {s['ok']} ok, {s['failed']} failed, "
      f"{s['fallback']} fell back"
    )
    if s["errors"]:
      error, count = next(iter(s["errors"].items()))
      line += f"; most common error ({count}x): {error}"
    lines.append(line)
  return lines


def expert_summary(rows: list[dict]) -> dict[str, dict[str, Any]]:
  out: dict[str, dict[str, Any]] = {}
  for r in rows:
    for c in r.get("expert_calls", []):
      s = out.setdefault(
        c["role"],
        {"calls": 0, "ok": 0, "failed": 0, "cached": 0, "fallback": 0, "latency_s": [], "errors": Counter()},
      )
      if c.get("cached"):  # an earlier answer reused (another N or method): not a call
        s["cached"] += 1
        continue
      s["calls"] += 1
      s["ok"] += bool(c["ok"])
      s["failed"] += not c["ok"]
      s["fallback"] += bool(c.get("fallback"))
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
  """One sentence on a `sample_pool`."""
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
  """The columns of `table_rows`, in order."""
  return ["method", *(f"N={n}" for n in ns), "ece", "auroc", "beta", "beta 95% CI"]


def write_report(out: pathlib.Path, summary: dict[str, Any], ns: list[int], methods: list[str]) -> None:
  """out/report.json (`summary` with the run's settings: benchmark, checkpoint, expert),
  out/accuracy_vs_n.png and out/report.md."""
  runs.write_json(out / "report.json", summary)
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
  runs.write_text(out / "report.md", "\n".join(parts) + "\n")


def _correct(rows: list[dict], method: str, n: int) -> list[bool]:
  return [bool(record["correct"]) for record in _records([r for r in rows if "error" not in r], method, n)]


def versus(rows: list[dict], a: str, b: str, n: int) -> dict:
  """Method `a` minus method `b` at N = n in points, on the same problems, with the paired
  bootstrap interval over problems."""
  return metrics.paired_difference_ci(_correct(rows, a, n), _correct(rows, b, n))


def _ran(record: dict, method: str) -> bool:
  """Whether the module `method` adds ran in a problem's record (catts: the Expert planned)."""
  if method == "catts":
    return record["plan"]["by"] == "expert"
  if method == "sc+voter":
    return any(m.get("voter", {}).get("ran") for m in record["modules"])
  wanted = {"sc+voter+sr": SELF_REFLECTION, "sc+voter+sr+sck": VISUAL_SELF_CHECK}.get(method)
  return any(m["module"] == wanted and m["ran"] for m in record["modules"]) if wanted else True


def module_steps(rows: list[dict], summary: dict, ns: list[int]) -> list[dict]:
  """The module-by-module table: per row its accuracy at each N, slope beta and its interval,
  its difference to the row before at the largest N (paired bootstrap), and on how many
  problems the added module ran there."""
  n, ok = ns[-1], [r for r in rows if "error" not in r]
  out, before = [], None
  for method, adds in MODULE_STEPS:
    fit = summary["slope"][method]
    row = {
      "method": method,
      "adds": adds,
      **{f"N={k}": 100 * summary["accuracy"][method][str(k)] for k in ns},
      "beta": fit["beta"],
      "beta 95% CI": f"[{fit['low']:.2f}, {fit['high']:.2f}]",
    }
    if before is None:
      row[f"vs row above @{n}"] = row["ran"] = "-"
    else:
      d = versus(ok, method, before, n)
      row[f"vs row above @{n}"] = f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
      row["ran"] = sum(_ran(r["methods"][method][str(n)], method) for r in ok)
    out.append(row)
    before = method
  return out


def parse_rates(calls: dict) -> dict:
  """Per Expert role: calls sent, replies parsed (a Planner reply that fell back to the
  default order is not), failed, and the parsed fraction."""
  out = {}
  for role, s in calls.items():
    parsed = s["ok"] - s["fallback"]
    out[role] = {"calls": s["calls"], "parsed": parsed, "failed": s["calls"] - parsed,
                 "rate": parsed / s["calls"] if s["calls"] else None}  # fmt: skip
  return out
