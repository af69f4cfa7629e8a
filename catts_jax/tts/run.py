"""CA-TTS and its baselines on a benchmark into an output directory (what `infer.catts` and
`catts_jax.demo` run).

    job = prepare(cfg, ckpt=..., benchmark="mathvision", data_path=DIR, out=OUT, ns="1,2,4", expert="self")
    summary = job.run(progress=bar.update)

`prepare` checks everything a user gives (config, checkpoint, N, methods, expert spec, data)
before any model is loaded, and raises ValueError (FileNotFoundError for missing data) naming
the bad input; it also records the run's settings in OUT/run.json, refusing an OUT that holds a
run with other settings. `Job.run` streams one row per problem to OUT/results.jsonl (a rerun
skips finished problems) and writes the report (`summary.write_report`).
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

from catts_jax import data, runs
from catts_jax.models.qwen2_5_vl import check_weights
from catts_jax.policy import Policy
from catts_jax.scoring import ConfidenceConfig
from catts_jax.tts import summary as summaries
from catts_jax.tts import validate, voting
from catts_jax.tts.expert import Expert, ExpertError, RemoteExpert
from catts_jax.tts.expert_spec import make_expert
from catts_jax.tts.methods import DEFAULT_METHODS, METHODS
from catts_jax.tts.planner import plan_ask
from catts_jax.tts.policy_ops import PolicyOps
from catts_jax.tts.runner import Runner

# What a resumed run must share with the rows already written (--limit may grow).
SETTINGS = ("checkpoint", "benchmark", "split", "ns", "methods", "expert", "config")


def resolve_ckpt(path: str | pathlib.Path) -> pathlib.Path:
  """An HF checkpoint directory, or a train/ output directory's final/ export."""
  ckpt = pathlib.Path(path).expanduser()
  if (ckpt / "config.json").is_file():
    return ckpt
  if (ckpt / "final" / "config.json").is_file():  # a train/ output directory
    return ckpt / "final"
  raise ValueError(
    f"--ckpt {ckpt}: no config.json; pass an HF checkpoint directory (train/ runs export theirs to DIR/final)"
  )


def parse_ns(text: str) -> list[int]:
  """'4,1,2' -> [1, 2, 4]."""
  try:
    ns = sorted({int(x) for x in text.split(",") if x.strip()})
  except ValueError:
    raise ValueError(f"--n {text!r}: expected comma-separated positive integers") from None
  if not ns or ns[0] < 1:
    raise ValueError(f"--n {text!r}: expected comma-separated positive integers")
  return ns


def parse_methods(text: str) -> list[str]:
  """'catts, majority' -> ['catts', 'majority'] (each once, in the given order)."""
  methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    raise ValueError(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}")
  return methods


DTYPES = ("float32", "bfloat16", "float16")


def compute_dtype(name: str, backend: str | None = None) -> str:
  """The `dtype` setting as a dtype name: "auto" is bfloat16 on GPU and TPU, float32 on CPU
  (`backend`: jax's default backend unless given)."""
  if name == "auto":
    import jax

    return "bfloat16" if (backend or jax.default_backend()) in ("gpu", "tpu") else "float32"
  if name not in DTYPES:
    raise ValueError(f"dtype={name!r}: expected auto or one of {', '.join(DTYPES)}")
  return name


def module_batch(cfg, backend: str | None = None) -> int:
  """The `module_batch` setting resolved: 0 (auto) is `solve_batch` (a whole round per policy
  call) on GPU and TPU and 1 on CPU, where batching is no faster (the Expert's image prompts'
  prefills are compute-bound at one row) and a batched decode waits for its longest row."""
  value = cfg.module_batch
  if value < 0:
    raise ValueError(f"module_batch={value}: expected 0 (auto) or a positive number of requests")
  if value:
    return value
  import jax

  return cfg.solve_batch if (backend or jax.default_backend()) in ("gpu", "tpu") else 1


def probe(expert: Expert) -> None:
  """One planner call on a text-only question: ValueError when the Expert cannot be reached or
  its reply is not a plan (a model that answers nonsense would only cost votes, silently)."""
  skip = "--noexpert_check skips this probe"
  try:
    _, call = expert.ask(plan_ask("What is 2 + 3?", [], order_all=True))
  except ExpertError as e:
    raise ValueError(f"--expert {expert.name}: the probe call failed ({e.record.error}); {skip}") from None
  if call.fallback:
    raise ValueError(
      f"--expert {expert.name}: its reply to a probe is no module plan ({call.output!r}); {skip}"
    )


def expert_options(cfg) -> dict[str, Any]:
  """make_expert's keyword arguments from the config's `expert` block."""
  e = cfg.expert
  return dict(
    timeout_s=e.timeout_s, max_retries=e.max_retries, backoff_s=e.backoff_s, max_backoff_s=e.max_backoff_s,
    budget_s=e.budget_s, failure_budget_s=e.failure_budget_s,
    model=e.model, provider=e.provider, api_key_env=e.api_key_env, seed=cfg.seed,
  )  # fmt: skip


@dataclasses.dataclass
class Job:
  """A checked run: its examples, settings (as in run.json) and output directory."""

  cfg: Any  # the ml_collections config (configs/catts.py)
  tts: voting.TTSConfig
  ckpt: pathlib.Path
  benchmark: str
  out: pathlib.Path
  ns: list[int]
  methods: list[str]
  expert: Expert | None  # None for "self" and "none"
  self_expert: bool  # the policy is its own Expert (built once it is loaded)
  examples: list[dict]
  settings: dict[str, Any]
  allow_partial: bool = False  # checkpoint tensors config.json does not describe are ignored

  @property
  def policy_key(self) -> tuple:
    """What `load_policy` depends on: jobs with equal keys can share one loaded policy."""
    return (str(self.ckpt), self.cfg.dtype, self.tts.deepconf_window, self.allow_partial)

  def load_policy(self) -> Policy:
    """The checkpoint as this run decodes and scores it."""
    confidence = ConfidenceConfig(window=self.tts.deepconf_window)
    return Policy.from_pretrained(
      self.ckpt, dtype=self.cfg.dtype, confidence=confidence, allow_partial=self.allow_partial
    )

  def run(
    self,
    progress: Callable[[int], Any] | None = None,
    policy: Policy | None = None,
    draws: dict | None = None,
  ) -> dict[str, Any]:
    """Loads the policy (or takes `policy`, from `load_policy` of a job with the same checkpoint
    and config, whose compiled programs it reuses), streams the rows, writes the report;
    returns report.json's content (settings and `summary.summarize`). `progress(k)`: k more
    problems are done. `draws`: the policy's draw cache, shared with other runs on it
    (PolicyOps)."""
    if policy is None:
      policy = self.load_policy()
    elif (policy.cfg.dtype, policy.confidence) != (
      self.cfg.dtype,
      ConfidenceConfig(window=self.tts.deepconf_window),
    ):
      raise ValueError(
        f"run(policy=): a policy loaded for other settings (dtype {policy.cfg.dtype}); use job.load_policy()"
      )
    expert = self.expert
    if self.self_expert:
      expert = make_expert(
        "self", policy, batch=self.cfg.module_batch,
        decode={k: self.cfg[k] for k in ("compact_every", "grow_cache", "share_prompt")},
        **expert_options(self.cfg),
      )  # fmt: skip
    ops = PolicyOps(policy, self.benchmark, self.cfg, draws=draws)
    runner = Runner(ops, self.examples, ns=self.ns, methods=self.methods, expert=expert, cfg=self.cfg)
    with runs.locked(self.out):  # one run writes results.jsonl at a time
      rows = runner.run(self.out, progress=progress)
      wanted = {str(ex["id"]) for ex in self.examples}
      rows = [r for r in rows if str(r["id"]) in wanted]
      categories = {str(ex["id"]): ex.get("category") or "" for ex in self.examples}
      result = {**self.settings, **summaries.summarize(rows, self.ns, self.methods, self.tts, categories)}
      summaries.write_report(self.out, result, self.ns, self.methods)
    return result


def prepare(
  cfg,
  *,
  ckpt: str | pathlib.Path,
  benchmark: str,
  out: str | pathlib.Path,
  data_path: str | None = None,
  split: str | None = None,
  data_dir: str | None = None,
  limit: int | None = None,
  ns: str = "1,2,4,8,16,32",
  methods: str = ",".join(DEFAULT_METHODS),
  expert: str = "none",
  expert_check: bool = True,
  allow_partial: bool = False,
  rebuild: bool = False,
  expert_name: str | None = None,
) -> Job:
  """Checks the inputs (ValueError or FileNotFoundError naming the bad one), loads the
  benchmark's first `limit` problems and checks or writes out/run.json. With `expert_check`,
  a remote Expert answers one probe call first (`probe`). The checkpoint's tensors must be
  those its config.json describes (`allow_partial`: extra ones are ignored). `expert_name`
  names a remote Expert in run.json and the records instead of its URL (a local server's port
  changes from run to run, and a resume must still match)."""
  cfg = copy.deepcopy(cfg)  # settled below for this run; the caller's config stays as given
  tts = validate.config(cfg, limit)
  cfg.dtype = compute_dtype(cfg.dtype)  # recorded resolved: a resume elsewhere must match it
  cfg.module_batch = module_batch(cfg)
  ns_, methods_ = parse_ns(ns), parse_methods(methods)
  ckpt_ = resolve_ckpt(ckpt)
  check_weights(ckpt_, allow_partial=allow_partial)
  self_expert = expert.strip().lower() == "self"
  remote = None if self_expert else make_expert(expert, **expert_options(cfg))
  if remote is not None and expert_name:
    remote.name = expert_name
  if isinstance(remote, RemoteExpert):
    import huggingface_hub.constants

    if huggingface_hub.constants.HF_HUB_OFFLINE:
      raise ValueError("HF_HUB_OFFLINE is set, which blocks huggingface_hub's client: unset it for --expert")
    if expert_check:
      probe(remote)
  dataset = data.load(benchmark, manual_dir=data_path, data_dir=data_dir, split=split, rebuild=rebuild)
  examples = dataset[: len(dataset) if limit is None else limit]
  settings = {
    "checkpoint": str(ckpt_),
    "benchmark": benchmark,
    "split": dataset.split,
    "ns": ns_,
    "methods": methods_,
    "expert": expert if remote is None else remote.name,  # a public name: no credentials
    "config": cfg.to_dict(),
  }
  out = pathlib.Path(out)
  with runs.locked(out):
    runs.read_rows(out / "results.jsonl", required="id")  # rows a resume can trust
    runs.check_settings(out, settings, SETTINGS)
  return Job(
    cfg, tts, ckpt_, benchmark, out, ns_, methods_, remote, self_expert, examples, settings, allow_partial
  )
