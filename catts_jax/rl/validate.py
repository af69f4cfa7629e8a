"""Every training setting checked before any work, and a resume checked against the run it
resumes (train.cdrl, catts_jax/rl/trainer.py; train.sft, catts_jax/rl/sft.py).

- `check(cfg, kind, devices)`: a bad value is a one-line `ConfigError` naming the setting
  (`--config.optimizer.learning_rate=-0.001: expected a number > 0`), raised before the out
  directory is touched or anything is loaded; the entry points print it and exit 2. The rows
  of a step must split over the mesh's data x fsdp devices (otherwise every device computes
  every row: the rows are replicated, not sharded), and so must a micro-batch's (otherwise the
  first train step fails, after the first rollout).
- `settings`, `resume_changes`, `record_run`: OUT/run.json records a run's config at its first
  start; a resume (a checkpoint to restore) whose config differs from it outside `FREE` is
  refused with a line naming each changed key (old -> new), unless `override`: then the change
  goes to run.json's history (and, by the trainer, to train.jsonl).

Values are read from `cfg.to_dict()`, a record of the config rather than a use of it
(tests/test_config_keys.py tells the keys a run uses from the ones it ignores).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

from catts_jax import runs, sharding
from catts_jax.rules import above, at_least, broken


class ConfigError(ValueError):
  """A training setting that would make a wrong run, or a resume with other settings; the
  message is one line naming the setting."""


# (setting, (predicate, expectation), may be None or absent). Names, dtypes and choices (loss
# aggregation, advantage, perturbation) are checked by the dataclasses that take them.
OPTIMIZER = (
  ("optimizer.learning_rate", above(0), False),
  ("optimizer.warmup_steps", at_least(0, True), False),
  ("optimizer.total_steps", at_least(1, True), False),
  ("optimizer.weight_decay", at_least(0), False),
  ("optimizer.clip_norm", at_least(0), True),  # None or 0: no clipping
  ("optimizer.accumulate", at_least(1, True), False),
  ("train.steps", at_least(1, True), False),
  ("train.save_every", at_least(1, True), False),
)
RULES = {
  "cdrl": OPTIMIZER
  + (
    ("train.prompts_per_step", at_least(1, True), False),
    ("train.oversample", at_least(1), False),
    ("train.updates_per_rollout", at_least(1, True), False),
    ("train.micro_batch", at_least(0, True), False),
    ("train.keep", at_least(1, True), False),
    ("rollout.group_size", at_least(1, True), False),
    ("rollout.max_new_tokens", at_least(1, True), False),
    ("rollout.sample_micro_batch", at_least(0, True), False),
    ("rollout.score_micro_batch", at_least(0, True), False),
    ("loss.kl_coef", at_least(0), False),
    ("loss.sft_coef", at_least(0), False),
    ("data.limit", at_least(1, True), True),  # None: every problem
  ),
  "sft": OPTIMIZER
  + (
    ("train.batch_size", at_least(1, True), False),
    ("train.micro_batch", at_least(0, True), True),
    ("eval.size", at_least(1, True), False),
    ("eval.every", at_least(0, True), False),
    ("eval.max_new_tokens", at_least(1, True), False),
  ),
}

_MISSING = object()


def _get(values: Mapping, key: str):
  for part in key.split("."):
    if not isinstance(values, Mapping) or part not in values:
      return _MISSING
    values = values[part]
  return values


def _devices(values: Mapping, key: str, devices: int) -> int:
  """data x fsdp of the mesh `values[key]` over `devices` devices (rows split over both)."""
  shape = values.get(key)
  try:
    sizes = sharding.mesh_sizes(sharding.parse_mesh(shape) if isinstance(shape, str) else shape, devices)
  except ValueError as e:
    raise ConfigError(f"--config.{key}={shape!r}: {e}") from None
  return sizes["data"] * sizes["fsdp"]


def _rows(values: Mapping, kind: str) -> tuple[str, int, str]:
  """(the setting that sizes a step's batch, the batch's rows, how they are counted)."""
  if kind == "sft":
    n = values["train"]["batch_size"]
    return "train.batch_size", n, f"{n} rows a step"
  p, g = values["train"]["prompts_per_step"], values["rollout"]["group_size"]
  return "train.prompts_per_step", p * g, f"{p} problems x rollout.group_size {g} = {p * g} rows a step"


def _rollout(values: Mapping) -> None:
  """The rollout settings' own checks (RolloutConfig: temperature 1, micro-batches of whole
  groups), made here so that a bad one stops the run before its output directory is touched."""
  from catts_jax.rl.rollout import RolloutConfig  # the rollout module pulls in the model

  try:
    RolloutConfig(**{**values["rollout"], "template": values.get("data", {}).get("template")})
  except (TypeError, ValueError) as e:
    raise ConfigError(f"--config.{e}") from None  # its messages name the setting: rollout.<key>=...


def check(cfg, kind: str, devices: int) -> None:
  """Check the config of a `kind` ("cdrl" or "sft") run over `devices` devices; ConfigError
  names the first bad setting."""
  values = cfg.to_dict()
  for key, (ok, expected), optional in RULES[kind]:
    value = _get(values, key)
    if optional and (value is None or value is _MISSING):
      continue
    if broken(value, (ok, expected)):
      raise ConfigError(f"--config.{key}={None if value is _MISSING else value!r}: {expected}")
  if kind == "cdrl":
    _rollout(values)
  if kind == "sft" and values.get("mesh") is None:
    return  # one device: nothing to split
  split = _devices(values, "mesh", devices)
  if kind == "cdrl" and values.get("rollout_mesh"):
    _devices(values, "rollout_mesh", devices)
  key, rows, counted = _rows(values, kind)
  if rows % split:
    raise ConfigError(
      f"--config.{key}={_get(values, key)}: {counted}; expected a multiple of data x fsdp = {split} "
      "devices (each device trains its own rows)"
    )
  micro = values["train"].get("micro_batch") or 0
  if micro % split:
    raise ConfigError(
      f"--config.train.micro_batch={micro}: expected a multiple of data x fsdp = {split} devices "
      "(each device keeps its own rows of each micro-batch)"
    )


# Settings a resume may change: they change how fast a run goes, how far, where it keeps its
# files or what it logs, not what a step computes. A key covers the settings under it.
FREE = (
  "train.steps",  # how far the run goes: a resume may extend it (the schedule is optimizer.*)
  "train.save_every",  # checkpointing
  "train.keep",
  "train.micro_batch",  # the same step in pieces (tests/test_micro_batches.py)
  "rollout.sample_micro_batch",
  "rollout.score_micro_batch",
  "eval.every",  # logging
  "mesh",  # the same step laid out on other devices (tests/test_train_cdrl.py, two processes)
  "rollout_mesh",
  "model.remat",  # recomputed activations, the same gradients (tests/test_configs.py)
  "data.data_dir",  # where the cache lives; its content follows the data folder
  "topology",  # read by train.compile only
)


def _free(key: str) -> bool:
  return any(key == f or key.startswith(f + ".") for f in FREE)


def settings(cfg) -> dict[str, Any]:
  """The config as {dotted key: value}, as JSON would give it back (tuples as lists)."""
  return _flatten(cfg.to_dict())


def _flatten(values: Mapping) -> dict[str, Any]:
  flat = {}

  def walk(values: Mapping, prefix: str) -> None:
    for k, v in values.items():
      if isinstance(v, Mapping) and v:
        walk(v, f"{prefix}{k}.")
      else:
        flat[f"{prefix}{k}"] = v

  walk(values, "")
  return json.loads(json.dumps(flat, default=str))


def _recorded(out: pathlib.Path) -> dict | None:
  """The settings run.json records; for a run from before run.json, its report.json's config."""
  path = out / "run.json"
  if path.is_file():
    return json.loads(path.read_text())["config"]
  report = out / "report.json"
  if report.is_file() and "config" in (old := json.loads(report.read_text())):
    return _flatten(old["config"])
  return None


def _show(value) -> str:
  return "(none)" if value is _MISSING else json.dumps(value)


def resume_changes(out: pathlib.Path, new: Mapping[str, Any], step: int | None, override: bool) -> dict:
  """The settings (`settings(cfg)`) that a resume from checkpoint `step` of `out` changes, as
  {key: [old, new]} (a missing key as None); {} for a fresh run (`step` None) or a run without
  a record. Raises ConfigError when one of them is not in FREE, unless `override`."""
  old = _recorded(pathlib.Path(out)) if step is not None else None
  if old is None:
    return {}
  keys = sorted(k for k in set(old) | set(new) if not _free(k))
  changed = {k: (old.get(k, _MISSING), new.get(k, _MISSING)) for k in keys}
  changed = {k: v for k, v in changed.items() if v[0] != v[1]}
  if changed and not override:
    listed = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changed.items())
    raise ConfigError(
      f"{out} holds a run (checkpoint of step {step}) with other settings: {listed}; resume it with "
      "its settings, pass --override_resume to go on with these, or use another --out"
    )
  return {k: [None if x is _MISSING else x for x in v] for k, v in changed.items()}


def record_run(out: pathlib.Path, new: Mapping[str, Any], step: int, changed: dict) -> list[dict]:
  """Write out/run.json: these settings, and the history of resumes that changed them (a fresh
  run, `step` 0, starts a new history); the history."""
  path = pathlib.Path(out) / "run.json"
  history = []
  if step and path.is_file():
    history = json.loads(path.read_text()).get("history", [])
  if step and not path.is_file():
    history.append({"step": step, "recorded": "first at this resume (a run from before run.json)"})
  if changed:
    history.append({"step": step, "changed": changed})
  runs.write_json(path, {"config": dict(new), "history": history})
  return history
