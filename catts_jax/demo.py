"""The demo of `infer.demo`: the bundled tiny checkpoints' calibration and test-time scaling.

    result = run(catts_cfg, out=OUT, sft=SFT, cdrl=CDRL, split="test", ns="1,2,4,8,16", ...)
    text = markdown(result)

1. Before/after CDRL (`calibration`): greedy answers of the SFT and the CDRL checkpoint on the
   synthetic split, each answer scored on its image and, teacher-forced, under VCD noise at
   full strength (the image is gone): accuracy, ECE, AUROC, confidence drop.
2. CA-TTS and its baselines on the CDRL checkpoint (`catts_run`: catts_jax.tts.run with the
   given configs/catts.py settings, the policy as its own Expert) on the synthetic split.
3. The real-benchmark path: the CDRL checkpoint through Math-Vision testmini (skipped when
   mv_limit is 0).

OUT/report.json holds the three stages and the demo's `targets`, each checked; OUT/report.md
the tables (`markdown`); PNGs: accuracy_vs_n.png (per CA-TTS run), reliability_{sft,cdrl}.png,
confidence_under_noise.png. Each stage resumes: a finished calibration is read back from
OUT/calibration.json, a CA-TTS run skips finished problems, and OUT/seconds.json sums each
stage's wall time over the runs that wrote OUT.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import pathlib
import time

import numpy as np
from tqdm import tqdm

from catts_jax import data, runs
from catts_jax.eval import greedy, metrics, report
from catts_jax.policy import Policy
from catts_jax.tts import run as tts_run
from catts_jax.tts import serve
from catts_jax.tts.summary import category_rows, columns, module_steps, parse_rates, pool_line, versus

METHODS = "catts,majority,deepconf,best-of-n,greedy"
# With a served Expert, also the module-by-module ablations and the Expert's own pick.
SERVED_METHODS = METHODS + ",sc,sc+voter,sc+voter+sr,sc+voter+sr+sck,voter-alone"
SELF_METHODS = "catts,majority"  # the `--expert self` row, beside majority on the same samples
NOISE = ("vcd_noise", 1.0)
PARSE_TARGET = 0.95  # parsed replies per Expert role


# --- stage 1: calibration before / after CDRL ----------------------------------------------------


def calibration(name: str, ckpt: str, examples: list[dict], max_new_tokens: int, out: pathlib.Path) -> dict:
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


# --- stage 2 and 3: CA-TTS (catts_jax.tts.run, as infer.catts runs it) -----------------------------


class InputError(ValueError):
  """A CA-TTS stage's settings or data were refused before any work (the message names them)."""


def catts_run(
  out: pathlib.Path,
  catts_cfg,
  ckpt: str,
  max_new_tokens: int,
  temperature: float,
  *,
  expert: str = "self",
  methods: str = METHODS,
  policies: dict | None = None,
  **inputs,
) -> dict:
  """CA-TTS and the baselines on `ckpt` with the configs/catts.py settings `catts_cfg` (not
  changed: decode length and temperature are set on a copy) and `expert` (an
  infer.catts --expert spec; "self": the policy); `inputs` go to tts.run.prepare (InputError
  names a bad one). `policies` keeps each loaded policy and its draws for a later stage of the
  same checkpoint and settings (`Job.policy_key`): its compiled programs and samples are
  reused (the same programs and seeds, so the same numbers). Returns report.json as written
  (read back, as a resumed demo reads it)."""
  cfg = copy.deepcopy(catts_cfg)
  cfg.sampling.max_new_tokens = max_new_tokens
  cfg.sampling.temperature = temperature
  cfg.reflection.max_new_tokens = max_new_tokens
  try:
    job = tts_run.prepare(cfg, ckpt=ckpt, out=out, methods=methods, expert=expert, **inputs)
  except (ValueError, FileNotFoundError) as e:
    raise InputError(f"CA-TTS in {out}: {e}") from e
  policies = {} if policies is None else policies
  if job.policy_key not in policies:
    policies[job.policy_key] = job.load_policy(), {}  # the policy and its draw cache
  policy, draws = policies[job.policy_key]
  with tqdm(total=len(job.examples), desc=f"catts ({out.name})", unit="problem") as bar:
    job.run(progress=bar.update, policy=policy, draws=draws)
  return json.loads((out / "report.json").read_text())


def fingerprint(ckpt: str | pathlib.Path) -> str:
  """The first 12 hex digits of a SHA-256 over a checkpoint's files (names and bytes, not
  training.json): a resume with other Expert weights at the same path is refused."""
  digest = hashlib.sha256()
  for path in sorted(pathlib.Path(ckpt).iterdir()):
    if path.is_file() and path.name != "training.json":
      digest.update(path.name.encode() + b"\0" + path.read_bytes())
  return digest.hexdigest()[:12]


@contextlib.contextmanager
def expert_servers(expert_ckpt: str, out: pathlib.Path, replicas: int):
  """`replicas` `transformers serve` processes of `expert_ckpt`, started at once (logs:
  out/expert_server*.log) and stopped at the block's end; yields their `serve.Servers`. A
  server that fails to start is an InputError."""
  if not (pathlib.Path(expert_ckpt) / "config.json").is_file():
    raise InputError(f"--expert {expert_ckpt}: not a checkpoint directory (no config.json)")
  try:
    with serve.serving(expert_ckpt, out / "expert_server.log", replicas=replicas) as servers:
      yield servers
  except serve.ServerError as e:
    raise InputError(f"the Expert {expert_ckpt}: {e}") from e


def served_catts_run(out: pathlib.Path, expert_ckpt: str, servers: serve.Servers, *args, **kwargs) -> dict:
  """catts_run with `expert_ckpt` served by `servers` (each call to the least busy one), named
  in run.json by its checkpoint and fingerprint (the ports change from run to run; the
  weights must not)."""
  urls = ",".join(url + "/v1" for url in servers.urls())
  name = f"transformers serve {expert_ckpt} ({fingerprint(expert_ckpt)})"
  return catts_run(out, *args, expert=urls, expert_name=name, **kwargs)


def served_figures(stage: pathlib.Path, syn: dict) -> dict:
  """What a run with the served Expert adds to its report: CA-TTS against majority at the
  largest N (paired), the module-by-module table and the parsed replies per role."""
  # In benchmark order: the file has them in the order problems finished, and the paired
  # bootstrap's intervals depend on the order of its problems.
  rows = sorted(runs.read_rows(stage / "results.jsonl", required="id"), key=lambda r: r["index"])
  ns = sorted(int(k) for k in syn["accuracy"]["majority"])
  return {
    "expert": syn["expert"],
    "catts_vs_majority": versus(rows, "catts", "majority", ns[-1]),
    "module_steps": module_steps(rows, syn, ns),
    "parse": parse_rates(syn["expert_calls"]),
  }


def targets(cal: dict, syn: dict) -> dict:
  """The demo's claims, each with its measured figures and whether it holds."""
  n = max(int(k) for k in syn["accuracy"]["majority"])
  majority_top = syn["accuracy"]["majority"][str(n)]
  beta = {m: syn["slope"][m]["beta"] for m in ("catts", "majority")}
  reached = [p for p in syn.get("adaptive", {}).get("points", []) if p["accuracy"] >= majority_top]
  fewest = min((p["mean_samples"] for p in reached), default=None)
  ratio = metrics.drop_ratio(cal["cdrl"]["confidence_drop"], cal["sft"]["confidence_drop"])
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
    f"catts_vs_majority_at_{n}": catts_vs_majority(syn, n),
    "adaptive_samples_to_majority_top": {
      "value": fewest,
      "target": f"< {n} mean samples for majority@{n} accuracy",
      "holds": fewest is not None and fewest < n,
    },
    **parse_targets(syn),
  }


def catts_vs_majority(syn: dict, n: int) -> dict:
  """CA-TTS above majority at N = n: with the run's paired bootstrap interval of the
  difference (`versus`), its lower end above 0; without one, the accuracies alone."""
  top = [syn["accuracy"]["catts"][str(n)], syn["accuracy"]["majority"][str(n)]]
  d = syn.get("catts_vs_majority")
  if d is None:
    return {"value": top, "target": "CA-TTS higher", "holds": top[0] > top[1]}
  return {
    "value": [*top, f"{d['diff']:+.1f} points [{d['low']:+.1f}, {d['high']:+.1f}]"],
    "target": "CA-TTS higher, the 95% interval of the difference above 0",
    "holds": top[0] > top[1] and d["low"] > 0,
  }


def parse_targets(syn: dict) -> dict:
  """Per Expert role that was called: parsed replies >= PARSE_TARGET of the calls sent."""
  return {
    f"expert_{role}_parsed": {
      "value": p["rate"],
      "target": f">= {PARSE_TARGET:.0%} of {p['calls']} calls",
      "holds": p["rate"] is not None and p["rate"] >= PARSE_TARGET,
    }
    for role, p in syn.get("parse", {}).items()
  }


# --- the report ---------------------------------------------------------------------------------


def markdown(result: dict) -> str:
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
      f"Expert `{syn.get('expert', 'self')}`, samples at temperature {syn['temperature']} (accuracy in %, "
      "ECE/AUROC at the largest N, beta = points per doubling of N):",
      "",
      report.markdown_table(syn["table"], columns(ns)),
      "",
      *served_lines(result, ns),
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


def served_lines(result: dict, ns: list[int]) -> list[str]:
  """The served Expert's module-by-module table, its replies per role, and the policy as its
  own Expert on the same problems (nothing when stage 2 ran with `--expert self`)."""
  syn, own = result["synthetic"], result.get("synthetic_self")
  if "module_steps" not in syn:
    return []
  n = ns[-1]
  parse = [
    f"{role} {p['parsed']}/{p['calls']} parsed ({p['failed']} failed)" for role, p in syn["parse"].items()
  ]
  lines = [
    f"Module by module (each row adds one module to the row above; `vs row above`: the difference at "
    f"N={n} in points with its paired bootstrap 95% interval; `ran`: problems where the added module "
    f"ran at N={n}); `voter-alone` is the Expert's own pick among the samples' answers at "
    + ", ".join(f"N={k} {100 * syn['accuracy']['voter-alone'][str(k)]:.1f}%" for k in ns)
    + ":",
    "",
    report.markdown_table(syn["module_steps"]),
    "",
    "Expert replies (calls sent, reused answers not counted): " + "; ".join(parse) + ".",
    "",
    *expert_vs_majority(syn, n),
  ]
  if own:
    row = {
      "method": "catts, `--expert self`",
      **{f"N={k}": 100 * own["accuracy"]["catts"][str(k)] for k in ns},
    }
    fit = own["slope"]["catts"]
    row.update(beta=fit["beta"], **{"beta 95% CI": f"[{fit['low']:.2f}, {fit['high']:.2f}]"})
    calls = "; ".join(
      f"{role} {p['parsed']}/{p['calls']} parsed" for role, p in parse_rates(own["expert_calls"]).items()
    )
    lines += [
      "The policy as its own Expert on the same problems and samples (replies: " + (calls or "none") + "):",
      "",
      report.markdown_table([row]),
      "",
    ]
  return lines


def expert_vs_majority(syn: dict, n: int) -> list[str]:
  """Per task at N = n: the Expert's own pick among the samples' answers against majority's
  (what the Voter's boost draws on)."""
  cats = syn.get("by_category", {})
  if not cats:
    return []
  acc = lambda c, m: 100 * cats[c]["accuracy"][m]  # noqa: E731
  parts = [f"{c or '-'} {acc(c, 'voter-alone'):.1f}% against {acc(c, 'majority'):.1f}%" for c in cats]
  return [
    f"The Expert's pick (voter-alone) against majority at N={n}, per task: " + "; ".join(parts) + ".",
    "",
  ]


def mathvision_lines(mv: dict | None) -> list[str]:
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


def run(
  catts_cfg,
  *,
  out: str | pathlib.Path,
  sft: str,
  cdrl: str,
  data_dir: str | None = None,
  split: str = "test",
  calibration_size: int | None = None,
  limit: int | None = None,
  ns: str = "1,2,4,8,16",
  max_new_tokens: int = 64,
  temperature: float = 0.7,
  mathvision: str | None = None,
  mv_limit: int = 16,
  expert: str = "self",
  expert_replicas: int = 2,
) -> dict:
  """The three stages into `out` (each resumed), then report.json and report.md; returns
  report.json's content. `catts_cfg`: configs/catts.py's settings for stages 2 and 3, which
  sample at `temperature`; every stage decodes up to `max_new_tokens`. Stage 1 reads the
  first `calibration_size` problems of the synthetic `split`, stage 2 the first `limit` at
  N in `ns`, stage 3 the first `mv_limit` Math-Vision problems of the release at `mathvision`
  (0 skips it). `expert`: the Expert checkpoint stage 2 serves with `expert_replicas`
  `transformers serve` processes, started before stage 1 (the module-by-module ablations run
  too, and the policy as its own Expert is a second run on the same problems), or "self"
  (the policy is its own Expert, one run). ValueError or FileNotFoundError: a bad input."""
  out = pathlib.Path(out)
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

  ds = data.load("synthetic", data_dir=data_dir, split=split)

  with contextlib.ExitStack() as stack:  # the Expert's servers load while calibration runs
    servers = None if expert == "self" else stack.enter_context(expert_servers(expert, out, expert_replicas))
    t = time.perf_counter()
    examples = ds[:calibration_size]
    done = out / "calibration.json"
    cal = json.loads(done.read_text()) if done.is_file() else {}
    for name, ckpt in (("sft", sft), ("cdrl", cdrl)):
      old = cal.get(name, {})
      if (old.get("checkpoint"), old.get("split"), old.get("n")) != (ckpt, split, len(examples)):
        cal[name] = {**calibration(name, ckpt, examples, max_new_tokens, out), "split": split}
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
    policies: dict = {}  # one policy (its compiled programs and draws) for the CA-TTS stages
    synthetic = dict(
      benchmark="synthetic", split=split, ns=ns, limit=limit, data_dir=data_dir, policies=policies
    )
    stage = out / "catts_synthetic"
    if expert == "self":
      syn = catts_run(stage, catts_cfg, cdrl, max_new_tokens, temperature, **synthetic)
    else:
      syn = served_catts_run(stage, expert, servers, catts_cfg, cdrl, max_new_tokens, temperature,
                             methods=SERVED_METHODS, **synthetic)  # fmt: skip
    add("catts_synthetic", t)
  own, served = None, {}
  if expert != "self":  # the policy as its own Expert, on the same problems and samples
    t = time.perf_counter()
    own = catts_run(out / "catts_synthetic_self", catts_cfg, cdrl, max_new_tokens, temperature,
                    methods=SELF_METHODS, **synthetic)  # fmt: skip
    add("catts_synthetic_self", t)
    served = served_figures(stage, syn)

  mv = None
  if mv_limit:
    t = time.perf_counter()
    mv = catts_run(out / "catts_mathvision", catts_cfg, cdrl, max_new_tokens, temperature,
                   benchmark="mathvision", data_path=mathvision, limit=mv_limit, ns="1,2,4",
                   policies=policies)  # fmt: skip
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
    "split": split,
    "calibration": cal,
    "synthetic": {
      **{k: syn[k] for k in keep if k in syn},
      **served,
      "temperature": syn["config"]["sampling"]["temperature"],
    },
    "synthetic_self": None if own is None else {k: own[k] for k in keep if k in own},
    "mathvision": None if mv is None else {k: mv[k] for k in keep if k in mv},
    "seconds": seconds,
  }
  result["targets"] = targets(cal, result["synthetic"])
  runs.write_json(out / "report.json", result)
  runs.write_text(out / "report.md", "# catts-jax demo\n\n" + markdown(result) + "\n")
  return result


def render_readme(readme: str | pathlib.Path, out: str | pathlib.Path) -> None:
  """Rewrite `readme`'s demo-table block from out/report.json (runs nothing)."""
  source = f"{out}/report.json"  # as given: the block is headed by this path
  runs.render_block(readme, "demo-table", source, markdown(json.loads(pathlib.Path(source).read_text())))
