"""A grid of AOT plans (models x topologies x strategies x shapes "PxGxR[xI]" = prompts x group
x response tokens [x image patches]), one subprocess per cell, streamed to DIR/sweep.jsonl (a
rerun resumes; cells whose meshes resolve alike are compiled once), and its Markdown table."""

from __future__ import annotations

import itertools
import json
import pathlib
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures

from catts_jax import runs
from catts_jax.aot.hardware import GiB, chip_for
from catts_jax.aot.plan import fmt, tflop_per_chip, verdict
from catts_jax.sharding import mesh_sizes


def sweep_cells(models, topologies, strategies, shapes, extra=()) -> list[tuple[str, str, str, str]]:
  cells = list(itertools.product(models, topologies, strategies, shapes))
  cells += [tuple(e.split("/")) for e in extra]
  for cell in cells:
    if len(cell) != 4:
      raise ValueError(f"sweep cell {cell}: expected model/topology/strategy/PxGxR")
  return cells


def cell_name(model, topology, strategy, shape) -> str:
  return f"{model}_{topology.replace(':', '-')}_{strategy}_{shape}"


def cell_command(
  program: Sequence[str],
  config_file: str,
  model,
  topology,
  strategy,
  shape,
  out: pathlib.Path,
  steps,
  image_patches: int,
) -> list[str]:
  """The plan of one cell: `program` (the plan entry point's argv, e.g. python -m train.compile)
  with `config_file`'s `<model>,cpu` config, the cell's batch, topology and strategy."""
  p, g, r, *i = shape.split("x")
  return [
    *program,
    f"--config={config_file}:{model},cpu",
    f"--config.train.prompts_per_step={p}",
    f"--config.rollout.group_size={g}",
    f"--config.rollout.max_new_tokens={r}",
    f"--topology={topology}",
    f"--strategy={strategy}",
    f"--steps={','.join(steps)}",
    f"--image_patches={i[0] if i else image_patches}",
    "--rollout_only_if_trains",  # a strategy that cannot train needs no rollout plan
    f"--out={out}",
  ]


def summary_row(name: str, cell, report: dict | None, error: str | None = None) -> dict:
  model, topology, strategy, shape = cell
  row = dict(name=name, model=model, topology=topology, strategy=strategy, shape=shape)
  if report is None:
    return row | {"error": error, "fits": False}
  row.update(
    chips=report["chips"],
    hbm_gib=report["chip"]["hbm_gib"],
    mesh=report["mesh"],
    backend=report["backend"],
    rows=report["shapes"]["rows"],
    seq_len=report["shapes"]["seq_len"],
    image_patches=report["shapes"]["image_patches"],
    state_gib=report["per_chip_state_gib"]["total"],
    fits=report["fits"],
    seconds=report["seconds"],
    steps={},
  )
  for step, r in report["steps"].items():
    collective_gib = step_collective_gib(r)  # a scanned step's loops counted by their trips
    if collective_gib is None and r.get("collectives"):
      collective_gib = sum(c["bytes"] for c in r["collectives"].values()) / GiB
    row["steps"][step] = dict(
      verdict=verdict(r),
      peak_gib=r.get("peak_gib"),
      total_gib=r.get("total_gib"),
      compile_s=program_seconds(r) or None,
      tflops=tflop_per_chip(r, report["chips"]) if r.get("compiled") else None,
      compute_floor_s=r.get("compute_floor_s"),
      collective_gib=collective_gib,
      oom=r.get("oom"),
      reason=r.get("reason"),
    )
  return row


def program_seconds(step: dict) -> float:
  """A step's compile seconds with its separate programs': generate's prefill, and the vision
  program under the prefill or the score step."""
  parts = (
    step,
    step.get("vision") or {},
    step.get("prefill") or {},
    (step.get("prefill") or {}).get("vision") or {},
  )
  return sum(part.get("compile_s") or 0 for part in parts)


def run_sweep(
  out: pathlib.Path,
  cells,
  steps,
  timeout: int,
  image_patches: int = 256,
  *,
  program: Sequence[str],
  config_file: str,
  strategies: Mapping[str, Mapping[str, int]],
  workers: int = 1,
  progress: Callable[[str], None] = lambda _: None,
) -> list[dict]:
  """Plan every cell (see `cell_command`) unless DIR/sweep.jsonl has it, `workers` cells at a
  time (rows are written as cells finish); `strategies` names the meshes of the cells'
  strategy column; `progress` gets "[i/n] name" as a cell starts. Returns one summary row per
  cell, in the order of `cells`."""
  out.mkdir(parents=True, exist_ok=True)
  log = out / "sweep.jsonl"
  done = {}
  for row in runs.read_rows(log):  # a row cut off by a killed sweep is skipped: its cell reruns
    report_file = out / "runs" / row["name"] / "report.json"
    if "error" not in row and "same_as" not in row and report_file.exists():  # as this code summarises
      cell = (row["model"], row["topology"], row["strategy"], row["shape"])
      row = summary_row(row["name"], cell, json.loads(report_file.read_text()))
    if row.get("same_as") in done:
      row = dict(done[row["same_as"]], name=row["name"], strategy=row["strategy"], same_as=row["same_as"])
    done[row["name"]] = row

  def resolved(cell):
    model, topology, strategy, shape = cell
    return (model, topology, tuple(mesh_sizes(strategies[strategy], chip_for(topology)[1]).items()), shape)

  first = {}  # resolved mesh and shape -> the cell that compiles it
  for cell in cells:  # finished cells first: a twin of one is not compiled again
    if cell_name(*cell) in done:
      first.setdefault(resolved(cell), cell_name(*cell))
  todo, twins = [], []
  for i, cell in enumerate(cells):
    name = cell_name(*cell)
    if name not in done:
      twin = first.setdefault(resolved(cell), name)
      (todo if twin == name else twins).append((i, cell, twin))

  def plan(i, cell):
    name = cell_name(*cell)
    cell_out = out / "runs" / name
    cell_out.mkdir(parents=True, exist_ok=True)
    progress(f"[{i + 1}/{len(cells)}] {name}")
    with (cell_out / "log.txt").open("w") as f:
      try:
        proc = subprocess.run(
          cell_command(program, config_file, *cell, cell_out, steps, image_patches),
          stdout=f,
          stderr=subprocess.STDOUT,
          timeout=timeout,
        )
        error = None if proc.returncode == 0 else f"exit status {proc.returncode} (see runs/{name}/log.txt)"
      except subprocess.TimeoutExpired:
        error = f"compile timed out after {timeout} s"
    report_file = cell_out / "report.json"
    report = json.loads(report_file.read_text()) if error is None and report_file.exists() else None
    return summary_row(name, cell, report, error)

  # Each cell compiles in its own process (a thread here only waits on it); rows are written
  # by this thread alone, as cells finish.
  with runs.appending(log) as write, futures.ThreadPoolExecutor(max(1, workers)) as pool:
    for job in futures.as_completed([pool.submit(plan, i, cell) for i, cell, _ in todo]):
      row = job.result()
      done[row["name"]] = row
      write(row)
    for _, cell, twin in twins:  # e.g. fsdp_tp and tp on 4 chips: the same mesh, compiled once
      name = cell_name(*cell)
      done[name] = dict(done[twin], name=name, strategy=cell[2], same_as=twin)
      write(done[name])
  return [done[cell_name(*c)] for c in cells]


def _memory_cell(step: dict | None, state_gib: float) -> str:
  """'peak / total' GiB per chip; for a compile-time OOM the compiler's temporaries and a
  lower bound of the total (temporaries + state); for a state OOM the state."""
  if step is None:
    return ""
  if step.get("peak_gib") is not None:
    return f"{step['peak_gib']:.1f} / {step['total_gib']:.1f}"
  temp = (step.get("oom") or {}).get("temp_gib")
  if temp is not None:
    return f"temps {temp:,.1f} / &ge; {temp + state_gib:,.1f}"
  if step["verdict"] == "OOM (state)":
    return f"state {state_gib:.1f}"
  return ""


def sweep_markdown(rows: list[dict]) -> str:
  """One row per cell: train and generate (decode loop) memory per chip, verdicts, cost and compile time."""
  lines = [
    "| model | topology | strategy (data/fsdp/tensor) | P x G x R, image patches | train batch | state GiB/chip "
    "| train peak / total GiB/chip | train | generate peak / total GiB/chip | generate | HBM GiB | train TFLOP/chip "
    "| train collectives GiB/chip/step | compile s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if "error" in r:
      lines.append(
        f"| {r['model']} | {r['topology']} | {r['strategy']} | {r['shape']} | | | | error: {r['error']} | | | | | | |"
      )
      continue
    mesh = "/".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    train, decode = r["steps"].get("train"), r["steps"].get("generate")
    shape = "x".join(r["shape"].split("x")[:3])
    compile_s = (
      " + ".join(f"{s['compile_s']:.0f}" for s in (train, decode) if s and s.get("compile_s")) or "-"
    )
    if train and train.get("verdict") == "batch does not divide":
      train_cell = ""
    else:
      train_cell = _memory_cell(train, r["state_gib"])
    collectives = "-"
    if train and train.get("collective_gib") is not None:
      collectives = f"{train['collective_gib']:.0f}"
    elif train and train.get("peak_gib") is not None:
      collectives = "n/a"
    lines.append(
      f"| {r['model']} | {r['topology']} ({r['chips']} chips) | {r['strategy']} ({mesh}) | {shape}, {r['image_patches']} "
      f"| {r['rows']} x {r['seq_len']} | {r['state_gib']:.1f} | {train_cell} | **{train['verdict'] if train else '-'}** "
      f"| {_memory_cell(decode, r['state_gib'])} | **{decode['verdict'] if decode else '-'}** | {r['hbm_gib']:.2f} "
      f"| {fmt(train.get('tflops') if train else None, '.0f')} | {collectives} | {compile_s} |"
    )
  return "\n".join(lines)


def step_collective_gib(step: dict) -> float | None:
  """GiB a chip's collectives move in one run of a scanned step (loop bodies times their trip
  counts); None for steps with no counted loops (a decode loop's run once per token)."""
  if not step.get("counted_loops") or not step.get("collectives"):
    return None
  return sum(c["step_bytes"] for c in step["collectives"].values()) / GiB


def plans_markdown(reports: dict[str, dict]) -> str:
  """One row per (plan report, step): the per-chip figures of `train.compile` reports, keyed
  by the path each was read from. A step of a later report replaces the same step of an
  earlier one for the same model, topology, mesh and shapes, images included (a step
  recompiled on its own)."""
  lines = [
    "| model | topology | mesh (data/fsdp/tensor) | step | rows x tokens | peak / total GiB/chip | HBM GiB "
    "| verdict | TFLOP/chip | replication | collectives GiB/chip/step | collectives per decode step "
    "| predicted tokens/s/chip | report |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]

  def mesh_of(r, name):  # the trainer's mesh for train, the rollout's for the rest
    mesh = r["mesh"] if name == "train" else r.get("rollout_mesh", r["mesh"])
    return "/".join(str(mesh[a]) for a in ("data", "fsdp", "tensor"))

  def key(r, name):
    shapes = r["steps"][name].get("shapes", r["shapes"])
    images = shapes.get("images", 0), shapes.get("image_patches", 0)
    return (
      r["model"]["preset"],
      r["topology"],
      mesh_of(r, name),
      name,
      shapes["rows"],
      shapes["seq_len"],
      images,
    )

  latest = {key(r, name): path for path, r in reports.items() for name in r["steps"]}
  for path, r in reports.items():
    for name, step in r["steps"].items():
      if latest[key(r, name)] != path:
        continue
      shapes = step.get("shapes", r["shapes"])
      if name.startswith("generate"):
        rows = (
          f"{shapes['prompts']} x {shapes['group']}, cache {shapes['prompt_len'] + shapes['max_new_tokens']}"
        )
      else:
        rows = f"{shapes['rows']} x {shapes['seq_len']}"
        if shapes.get("images"):
          rows += f", {shapes['images']} x {shapes['image_patches']} patches"
      memory = "-"
      if step.get("peak_gib") is not None:
        memory = f"{step['peak_gib']:.1f} / {step['total_gib']:.1f}"
      elif (step.get("oom") or {}).get("temp_gib") is not None:
        memory = f"temps {step['oom']['temp_gib']:,.1f}"
      tflops = fmt(tflop_per_chip(step, r["chips"]) if step.get("compiled") else None)
      lines.append(
        f"| {r['model']['preset']} | {r['topology']} ({r['chips']} chips) "
        f"| {mesh_of(r, name)} "
        f"| {name} | {rows} | {memory} | {r['chip']['hbm_gib']:.2f} | **{verdict(step)}** | {tflops} "
        f"| {fmt(step.get('replication'), '.2f')} | {fmt(step_collective_gib(step), ',.1f')} "
        f"| {fmt(step.get('collectives_per_decode_step'), 'd')} "
        f"| {fmt(step.get('predicted_tokens_per_s_per_chip'), ',.0f')} | `{path}` |"
      )
  return "\n".join(lines)
