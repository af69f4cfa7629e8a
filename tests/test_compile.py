"""catts_jax.aot and train.compile / train.sweep: AOT plans from abstract state for TPU topologies
(libtpu compile-only devices when installed, simulated CPU devices otherwise), clear OOM reports,
HLO collectives, the sweep."""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from catts_jax import runs, sharding
from catts_jax.aot import hardware, hlo, measure, plan, shapes, sweep
from catts_jax.aot.hardware import GiB
from catts_jax.models.qwen2_5_vl import presets
from configs import cdrl_qwen2_5_vl

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(prompts=1, group=4, response=32):
  c = cdrl_qwen2_5_vl.get_config("small,cpu")
  c.train.prompts_per_step, c.rollout.group_size, c.rollout.max_new_tokens = prompts, group, response
  return c


HLO = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%body (p: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %p = (s32[], f32[8,128]{1,0}) parameter(0)
  %x = f32[8,128]{1,0} get-tuple-element(%p), index=1
  %ar = f32[8,128]{1,0:T(8,128)} all-reduce(f32[8,128]{1,0} %x), replica_groups={{0,1}}, to_apply=%add
  %ags = (bf16[4,128]{1,0}, bf16[16,128]{1,0}) all-gather-start(bf16[4,128]{1,0} %y), dimensions={0}
  %agd = bf16[16,128]{1,0} all-gather-done(%ags)
  ROOT %t = (s32[], f32[8,128]{1,0}) tuple(%i, %ar)
}

%cond (p: (s32[], f32[8,128])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: f32[64,32]) -> f32[16,32] {
  %x = f32[64,32]{1,0} parameter(0)
  %rs = f32[16,32]{1,0} reduce-scatter(f32[64,32]{1,0} %x), dimensions={0}, to_apply=%add
  %cp = (f32[16,32]{1,0}, f32[16,32]{1,0}, u32[], u32[]) collective-permute-start(%rs), source_target_pairs={{0,1}}
  %cpd = f32[16,32]{1,0} collective-permute-done(%cp)
  %w = (s32[], f32[8,128]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %r = f32[16,32]{1,0} copy(%cpd)
}
"""


def test_hlo_collectives_counts_bytes_and_loop_bodies():
  ar, ag, rs = 8 * 128 * 4, 16 * 128 * 2, 16 * 32 * 4
  once = lambda n, b, loop: dict(count=n, bytes=b, loop_count=n * loop, loop_bytes=b * loop)  # noqa: E731
  got = hlo.hlo_collectives(HLO)
  assert hlo.known_trip_counts(HLO) == {}
  assert got == {  # a loop of unknown length (decoding): its body's collectives once
    "all-reduce": dict(once(1, ar, 1), step_count=1, step_bytes=ar),
    "all-gather": dict(once(1, ag, 1), step_count=1, step_bytes=ag),
    "reduce-scatter": dict(once(1, rs, 0), step_count=1, step_bytes=rs),
    "collective-permute": dict(once(1, rs, 0), step_count=1, step_bytes=rs),
  }
  # A scan over 28 layers: its body's collectives count 28 times a step.
  scanned = HLO.replace("body=%body", 'body=%body, backend_config={"known_trip_count":{"n":"28"}}')
  assert hlo.known_trip_counts(scanned) == {"body": 28}
  got = hlo.hlo_collectives(scanned)
  assert got["all-reduce"] == dict(once(1, ar, 1), step_count=28, step_bytes=28 * ar)
  assert got["reduce-scatter"] == dict(once(1, rs, 0), step_count=1, step_bytes=rs)
  # TPU states no trip count: a condition that only compares the counter with 12 runs 12 times;
  # one that reads anything else (a decode loop's "all rows done") has no known count.
  counted = """  %p = (s32[], f32[8,128]{1,0}) parameter(0)
  %n = s32[] constant(12)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %c = pred[] compare(s32[] %i, s32[] %n), direction=LT"""
  tpu = HLO.replace("  ROOT %c = pred[] constant(true)", counted)
  assert hlo.known_trip_counts(tpu) == {"body": 12}
  assert hlo.hlo_collectives(tpu)["all-gather"]["step_bytes"] == 12 * ag
  unknown = tpu.replace("ROOT %c = pred[] compare", "%d = pred[] and(%i, %n)\n  ROOT %c = pred[] compare")
  assert hlo.known_trip_counts(unknown) == {}


def test_compile_oom_message_is_parsed():
  error = RuntimeError(
    "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory "
    "required for HLO temporaries (525.39G) exceeds available HBM (15.75G). HLO module: jit__lambda."
  )
  oom = hlo.compile_oom(error)
  assert oom["temp_gib"] == pytest.approx(525.39) and oom["available_gib"] == pytest.approx(15.75)
  assert hlo.compile_oom(ValueError("incompatible shapes")) is None


def test_mesh_and_topology_parsing():
  assert sharding.parse_mesh("data=1,fsdp=16,tensor=1") == {"data": 1, "fsdp": 16, "tensor": 1}
  assert sharding.mesh_sizes({"data": 1, "fsdp": -1, "tensor": 4}, 16) == {"data": 1, "fsdp": 4, "tensor": 4}
  assert hardware.chip_for("v5p:2x2x2")[1] == 8 and hardware.chip_for("v5e:4x4")[0].hbm_gib == 15.75
  with pytest.raises(ValueError, match="needs 3 devices, have 16"):
    sharding.mesh_sizes({"fsdp": 3, "tensor": 1, "data": 1}, 16)
  with pytest.raises(ValueError, match="expected"):
    hardware.chip_for("v9x:4x4")


def test_plan_compiles_generate_score_and_train():
  """The real sampler, scorer and train step of a small model on a 4-chip v5e (TPU
  compile-only devices when libtpu is installed): per-chip memory holds the sharded state,
  the FSDP step gathers weights, the decode loop's collectives run per token, and the report
  carries the per-step figures the sweep and docs/sharding.md quote."""
  cfg = small()
  cfg.loss.sft_coef = 1.0  # the batch then carries the solution rows' marks
  report = plan.plan(cfg, "v5e:2x2", {"data": 1, "fsdp": -1}, prompt_len=64, image_patches=64)
  assert report["backend"].startswith("tpu" if HAS_LIBTPU else "cpu-simulated")
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and report["chips"] == 4
  assert report["shapes"]["rows"] == 4 and report["shapes"]["seq_len"] == 96  # 64 + 32: 4 buckets an octave
  assert report["shapes"]["images"] == 1  # one slot per prompt, shared by its 4 rows
  state = report["per_chip_state_gib"]
  steps = report["steps"]
  train, generate, score = steps["train"], steps["generate"], steps["score"]
  assert all(s["compiled"] for s in (train, generate, score, generate["prefill"])) and report["fits"]
  # The image slots are encoded by their own program, as the sampler and the scorer run them;
  # the prefill and the score program take its features.
  for vision in (generate["prefill"]["vision"], score["vision"]):
    assert vision["compiled"] and vision["fits"] and vision["flops"] > 0
  # Params and Adam moments are arguments of the step: at least their per-chip bytes.
  assert train["memory_bytes"]["argument"] >= (state["params"] + state["optimizer"]) * GiB
  assert train["memory_bytes"]["alias"] > 0  # donated params and optimizer state
  # The rollout reads a bf16 copy of the weights (the decode loop: the text model's only);
  # masters, optimizer state and the bf16 reference stay resident beside it.
  assert 0.2 * state["params"] * GiB <= generate["memory_bytes"]["argument"]
  assert state["reference"] == pytest.approx(state["params"] / 2, rel=0.01)
  resident = generate["resident_outside_bytes"] / GiB
  assert resident == pytest.approx(state["params"] + state["optimizer"] + state["reference"])
  # The train step and the scoring pass scan the layers: XLA's cost analysis counts the scanned
  # body once, so their floors come from the model's FLOPs and no per-chip total is claimed.
  peak = report["chip"]["bf16_tflops"] * 1e12
  for s in (train, score):
    assert s["counted_loops"] and s["flops"] > 0
    assert s["flops_per_chip"] is None and s["replication"] is None and s["memory_floor_s"] is None
    assert s["compute_floor_s"] == pytest.approx(s["model_flops"] / 4 / peak)
  assert train["model_flops"] == pytest.approx(train["analytic_flops_per_chip"] * 4)
  assert plan.tflop_per_chip(train, 4) == pytest.approx(train["model_flops"] / 4 / 1e12)  # the table's
  assert plan.tflop_per_chip(generate, 4) == pytest.approx(generate["flops"] / 1e12)
  assert plan.tflop_per_chip({"flops_per_chip": None}, 4) is None  # unknown, not 0
  gathers = train["collectives"]["all-gather"]
  assert gathers["count"] > 0 and gathers["step_bytes"] > gathers["bytes"]  # per layer, every layer
  assert generate["collectives_per_decode_step"] > 0
  assert generate["flops_per_chip"] == generate["flops"]
  assert generate["replication"] == pytest.approx(generate["flops"] * 4 / generate["model_flops"])
  for s in (train, generate, score):
    assert s["peak_gib_per_chip"] == s["peak_gib"]
  step_s = max(generate["compute_floor_s"], generate["memory_floor_s"])
  assert generate["predicted_tokens_per_s_per_chip"] == pytest.approx(4 / 4 / step_s)
  assert report["fits"] == all(s["total_gib"] <= s["hbm_gib"] for s in (train, generate, score))


@pytest.mark.parametrize("mesh", [{"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 8}], ids=["d2f2t2", "f8"])
def test_rollout_steps_split_their_work_over_chips(mesh):
  """No replicated rows: on 8 simulated devices the compiled decode loop and scoring pass do
  at most 1.3x a single device's FLOPs / 8; the replicated layout does more, and talks every
  token. (4 rows a
  device: what does not scale with rows, e.g. the loop's bookkeeping, weighs ~0.7 row of
  this small model's step.)"""
  cfg = small(prompts=16, group=2, response=16)
  how = dict(steps=("generate", "score"), prompt_len=64, image_patches=64, cpu=True)
  one = plan.plan(cfg, "v5e:1x1", {"data": 1}, **how)["steps"]
  eight = plan.plan(cfg, "v5e:2x4", mesh, replicated_rollout=True, **how)["steps"]
  for step in ("generate", "score"):
    assert eight[step]["flops"] <= 1.3 * one[step]["flops"] / 8, (
      step,
      eight[step]["flops"] * 8 / one[step]["flops"],
    )
  # Replicated rows over FSDP weights: the matmuls still split (over the sharded contraction
  # dim, then all-reduced every token), the rest is done 8 times.
  replicated = eight["generate_replicated"]
  assert replicated["flops"] > 1.5 * one["generate"]["flops"] / 8
  assert replicated["collectives_per_decode_step"] > 2 * eight["generate"]["collectives_per_decode_step"]


def test_cpu_fallback_says_so():
  report = plan.plan(small(), "v4:2x2x1", {"fsdp": 2, "tensor": 2, "data": 1}, ("generate",), 64, 0, cpu=True)
  assert report["backend"].startswith("cpu-simulated (--cpu given")
  assert report["steps"]["generate"]["compiled"] and report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}


def test_state_larger_than_hbm_is_reported_without_compiling():
  """7B with plain data parallelism: every chip holds all params, moments and the reference."""
  cfg = cdrl_qwen2_5_vl.get_config("7b,v5e-16")
  report = plan.plan(cfg, "v5e:2x2", cdrl_qwen2_5_vl.STRATEGIES["dp"])
  assert not report["fits"]
  train = report["steps"]["train"]
  assert (
    not train["compiled"]
    and "does not fit" in train["reason"]
    and "GiB per chip > 15.75 GiB" in train["reason"]
  )
  assert report["per_chip_state_gib"]["total"] > 100  # 8.3B params x (4 + 8 + 4) bytes
  assert plan.verdict(train) == "OOM (state)"


def test_over_large_batch_reports_oom_instead_of_crashing():
  """A batch whose activations exceed HBM: the TPU compiler's out-of-memory error becomes a
  'does not fit' with its numbers (on the CPU fallback: the measured peak above HBM)."""
  # 128 prompts x 8 rows x 4096 tokens: with layers scanned and attention chunked the small
  # model needs ~0.2 GiB of activations per prompt, so this is ~22 GiB on a 16 GiB chip.
  cfg = small(prompts=128, group=8, response=2048)
  cfg.model.buckets_per_octave = 1  # 64 + 2048 tokens -> 4096
  cfg.train.micro_batch = 0  # the whole batch in one pass
  report = plan.plan(
    cfg,
    "v5e:2x2",
    cdrl_qwen2_5_vl.STRATEGIES["fsdp"],
    ("train", "generate"),
    64,
    0,
    rollout_only_if_trains=True,
  )
  train = report["steps"]["train"]
  assert not report["fits"] and not train["fits"]
  # A strategy that cannot train gets no rollout plan.
  assert not report["steps"]["generate"]["compiled"]
  assert plan.verdict(report["steps"]["generate"]) == "not planned (train OOM)"
  if "oom" in train:
    assert train["oom"]["temp_gib"] > train["oom"]["available_gib"] == pytest.approx(15.75)
    assert plan.verdict(train) == "OOM (compile)"
  else:
    assert train["total_gib"] > train["hbm_gib"]


def test_cli_writes_report_and_prints_table(tmp_path):
  out = tmp_path / "plan"
  cmd = [
    sys.executable,
    "-m",
    "train.compile",
    "--config=configs/cdrl_qwen2_5_vl.py:small,cpu",
    "--config.train.prompts_per_step=2",
    "--config.rollout.max_new_tokens=16",
    "--topology=v5e:2x2",
    "--mesh=data=1,fsdp=2,tensor=2",
    "--steps=generate",
    "--prompt_len=64",
    "--image_patches=0",
    f"--out={out}",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads((out / "report.json").read_text())
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2} and report["strategy"] == "custom"
  assert report["topology"] == "v5e:2x2" and report["fits"]
  assert "generate" in proc.stdout and "fits: yes" in proc.stdout


def test_sweep_resumes_dedupes_and_renders(tmp_path, monkeypatch):
  cells = [("small", "v5e:2x2", "fsdp_tp", "1x2x16x0"), ("small", "v5e:2x2", "tp", "1x2x16x0")]
  how = dict(
    program=(sys.executable, "-m", "train.compile"),
    config_file="configs/cdrl_qwen2_5_vl.py",
    strategies=cdrl_qwen2_5_vl.STRATEGIES,
  )
  rows = sweep.run_sweep(tmp_path, cells, ["generate"], timeout=300, **how)
  assert rows[0]["steps"]["generate"]["verdict"] == "fits" and rows[0]["image_patches"] == 0
  # tp and fsdp_tp are the same mesh on 4 chips: compiled once.
  assert rows[1]["same_as"] == rows[0]["name"] and rows[1]["strategy"] == "tp"
  assert not (tmp_path / "runs" / rows[1]["name"]).exists()

  def no_run(*args, **kwargs):
    raise AssertionError("a finished cell was compiled again")

  monkeypatch.setattr(sweep.subprocess, "run", no_run)
  with (tmp_path / "sweep.jsonl").open("a") as f:
    f.write('{"name": "cut off by a kill')  # skipped on resume, trimmed before the next row
  assert sweep.run_sweep(tmp_path, cells, ["generate"], timeout=300, **how) == rows
  assert (tmp_path / "sweep.jsonl").read_text().endswith("}\n")
  table = sweep.sweep_markdown(rows)
  assert table.count("| small | v5e:2x2 (4 chips) |") == 2 and "**fits**" in table
  doc = tmp_path / "doc.md"
  doc.write_text("intro\n<!-- sweep-table:start -->\nold\n<!-- sweep-table:end -->\noutro\n")
  runs.replace_block(doc, "sweep-table", table)
  assert doc.read_text() == f"intro\n<!-- sweep-table:start -->\n{table}\n<!-- sweep-table:end -->\noutro\n"


def test_sweep_workers_compile_cells_at_once_and_keep_the_cells_order(tmp_path, monkeypatch):
  """Cells run `workers` at a time; rows come back in the cells' order, a twin after its cell."""
  running, most, lock = [0], [0], threading.Lock()

  def fake_compile(cmd, **kwargs):  # a failed compile: its row records the error
    with lock:
      running[0] += 1
      most[0] = max(most[0], running[0])
    time.sleep(0.2 if "--strategy=fsdp" in cmd else 0.05)  # the first cell finishes last
    with lock:
      running[0] -= 1
    return subprocess.CompletedProcess(cmd, 1)

  monkeypatch.setattr(sweep.subprocess, "run", fake_compile)
  cells = [
    ("small", "v5e:2x2", "fsdp", "1x2x16x0"),
    ("small", "v5e:2x2", "fsdp_tp", "1x2x16x0"),
    ("small", "v5e:2x2", "tp", "1x2x16x0"),  # fsdp_tp's mesh on 4 chips
    ("small", "v5e:2x2", "fsdp_tp", "1x2x32x0"),
  ]
  how = dict(program=("plan",), config_file="c.py", strategies=cdrl_qwen2_5_vl.STRATEGIES)
  rows = sweep.run_sweep(tmp_path, cells, ["generate"], timeout=60, workers=2, **how)
  assert most[0] == 2
  assert [r["name"] for r in rows] == [sweep.cell_name(*c) for c in cells]
  assert rows[2]["same_as"] == rows[1]["name"] and "error" in rows[0]
  written = [r["name"] for r in runs.read_rows(tmp_path / "sweep.jsonl")]
  assert sorted(written) == sorted(r["name"] for r in rows) and written[0] != rows[0]["name"]


def test_sweep_row_counts_scanned_steps_whole():
  # A scanned train step: XLA counts each loop body once, so the row takes the collectives'
  # per-step bytes (bodies times trips) and the model's FLOPs; generate's compile includes
  # its prefill's and the vision program's, score's the vision program's.
  collectives = {
    "all-gather": {"bytes": 1 * GiB, "step_bytes": 28 * GiB},
    "all-reduce": {"bytes": 0, "step_bytes": 2 * GiB},
  }
  train = dict(
    compiled=True,
    fits=True,
    peak_gib=5.0,
    total_gib=6.0,
    compile_s=50.0,
    flops_per_chip=None,
    model_flops=16e15,
    collectives=collectives,
    counted_loops={"body": 28},
  )
  generate = dict(
    compiled=True,
    fits=True,
    peak_gib=1.0,
    total_gib=2.0,
    compile_s=10.0,
    flops_per_chip=2e12,
    collectives={"all-gather": {"bytes": 3 * GiB}},
    prefill=dict(compile_s=9.0, vision=dict(compile_s=2.0)),
  )
  score = dict(compiled=True, fits=True, compile_s=7.0, vision=dict(compile_s=1.5))
  report = dict(
    chips=16,
    chip=dict(hbm_gib=15.75),
    mesh=dict(data=1, fsdp=16, tensor=1),
    backend="tpu",
    fits=True,
    shapes=dict(rows=16, seq_len=2048, image_patches=256),
    per_chip_state_gib=dict(total=7.7),
    seconds=80.0,
    steps=dict(train=train, generate=generate, score=score),
  )
  row = sweep.summary_row("cell", ("7b", "v5e:4x4", "fsdp", "2x8x1024"), report)
  assert row["steps"]["score"]["compile_s"] == 8.5
  assert row["steps"]["train"]["collective_gib"] == 30.0 and row["steps"]["train"]["tflops"] == 1000.0
  assert row["steps"]["generate"]["collective_gib"] == 3.0 and row["steps"]["generate"]["tflops"] == 2.0
  assert row["steps"]["generate"]["compile_s"] == 21.0
  assert "| 1000 | 30 | 50 + 21 |" in sweep.sweep_markdown([row])


def test_bench_times_the_real_train_step_and_checks_flops():
  cfg = small()
  cfg.model.dtype = "float32"
  cfg.loss.sft_coef = 1.0  # one of the two rows is a reference solution
  r = measure.train_step(cfg, rows=2, prompt_len=64, response_len=16, image_patches=16, steps=2, device="cpu")
  assert r["batch"]["tokens"] == 2 * 80 and r["model"]["remat"] and r["model"]["vision_params"] > 0
  assert 0 < r["step_s"] < r["compile_s"] and len(r["step_times_s"]) == 2
  batch_shapes = shapes.Shapes(2, 1, 2, 16, 80, 2, 32, 2, 64, 16, 16)
  assert r["model_flops"] == pytest.approx(
    shapes.analytic_train_flops(presets.resolve(cfg.model), batch_shapes)
  )
  # XLA also counts the text model's remat recompute, the masked half of causal attention and
  # the optimizer: more than the model's work, but not wildly so.
  assert 1.0 < r["xla_over_model_flops"] < 2.0
  assert r["mfu"] is None and 0 < r["mfu_of_measured_matmul"] < 1  # no nominal peak for a CPU
  assert all(abs(x) < 1e3 for x in r["losses"])


def test_bench_gpu_without_gpu_says_so(tmp_path):
  cmd = [sys.executable, "-m", "train.bench", "--device=gpu", "--config=configs/cdrl_qwen2_5_vl.py:small,cpu"]
  proc = subprocess.run(cmd + [f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "--device gpu but jax's backend is cpu" in proc.stderr


def test_trainer_shapes_follow_the_configs_length_buckets():
  """64 prompt + 32 response tokens: 128 with power-of-two buckets, 96 with four per octave."""
  model_cfg = presets.resolve(small().model)
  coarse, fine = (shapes.trainer_shapes(model_cfg, 1, 4, 32, 64, 64, k) for k in (1, 4))
  assert (coarse.seq_len, fine.seq_len) == (128, 96)
  assert coarse.response_len == fine.response_len == 32


def test_sweep_cli_writes_table_and_renders_block(tmp_path):
  doc = tmp_path / "doc.md"
  doc.write_text("<!-- sweep-table:start -->\n<!-- sweep-table:end -->\n")
  cmd = [
    sys.executable,
    "-m",
    "train.sweep",
    f"--out={tmp_path / 'sweep'}",
    "--models=small",
    "--topologies=v5e:2x2",
    "--strategies=fsdp_tp",
    "--shapes=1x2x16x0",
    "--extra=",
    "--steps=generate",
    f"--render_readme={doc}",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  table = (tmp_path / "sweep" / "sweep.md").read_text().strip()
  assert "| small | v5e:2x2 (4 chips) | fsdp_tp (1/1/4) |" in table and table in doc.read_text()
  assert len(json.loads((tmp_path / "sweep" / "report.json").read_text())["cells"]) == 1


def test_plan_compiles_the_rollout_on_its_own_mesh():
  """config rollout_mesh: generate runs on it (weights replicated over its data axis), and the
  once-a-step reshard of the masters to it is compiled and costed."""
  cfg = small(prompts=4, group=2, response=16)
  cfg.rollout_mesh = "data=2,tensor=2"
  report = plan.plan(cfg, "v5e:2x2", {"fsdp": -1}, ("generate",), 64, 0, cpu=True)
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert report["rollout_mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
  reshard, generate = report["steps"]["reshard"], report["steps"]["generate"]
  assert reshard["compiled"] and generate["compiled"]
  # A bf16 copy split 2 ways (tensor; replicated over data) is about as many bytes a chip as
  # the fp32 masters split 4 ways (fsdp).
  assert reshard["memory_bytes"]["output"] > 0.5 * report["per_chip_state_gib"]["params"] * GiB
  assert sum(c["count"] for c in reshard["collectives"].values()) > 0


def test_plans_lay_out_batches_as_the_trainer_does():
  """The abstract train / scoring batch that train.compile lowers carries, field by field,
  the shardings the Learner and the Scorer give a host batch of the same shapes."""
  from catts_jax.rl.batch import TrainBatch, batch_shardings

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model_cfg = presets.resolve(small().model)
  planned = shapes.train_batch(model_cfg, shapes.trainer_shapes(model_cfg, 4, 4, 32, 64, 64), mesh)
  host = TrainBatch(**{k: np.zeros(x.shape, x.dtype) for k, x in planned.fields().items()})
  run = batch_shardings(host, mesh).fields()
  scorer_inputs = sharding.input_shardings(host.model_inputs(), mesh)
  for name, x in planned.fields().items():
    assert x.sharding.is_equivalent_to(run[name], len(x.shape)), name
  for name, s in scorer_inputs.items():
    assert s.is_equivalent_to(planned.fields()[name].sharding, len(planned.fields()[name].shape)), name
  assert "image_index" in run and run["pixel_values"].spec[0] is not None  # slots travel with rows


def test_plan_table_takes_a_recompiled_step_from_the_later_report():
  """--render_readme's table: a later report's step replaces the same step (model, topology,
  shapes) of an earlier one; a scanned step shows the model's TFLOP a chip and its
  collectives per step (loop bodies times trip counts)."""
  chip = {"hbm_gib": 16.0}
  shapes = {"rows": 16, "seq_len": 64, "prompts": 2, "group": 8, "prompt_len": 32, "max_new_tokens": 32}

  def report(train):
    generate = {"compiled": True, "fits": True, "flops_per_chip": 2e12, "peak_gib": 1.0, "total_gib": 2.0}
    steps = {"generate": generate, "train": train}
    mesh = {"data": 1, "fsdp": 4, "tensor": 1}
    return {"model": {"preset": "7b"}, "topology": "v5e:2x2", "chips": 4, "chip": chip, "mesh": mesh,
            "shapes": shapes, "steps": steps}  # fmt: skip

  old = {"compiled": True, "fits": False, "flops_per_chip": 9e12, "peak_gib": 20.0, "total_gib": 21.0}
  gathers = {"all-gather": {"step_bytes": 3 * GiB}, "all-reduce": {"step_bytes": GiB}}
  new = {"compiled": True, "fits": True, "flops_per_chip": None, "model_flops": 8e12, "peak_gib": 5.0,
         "total_gib": 6.0, "counted_loops": {"layers": 2}, "collectives": gathers}  # fmt: skip
  rows = sweep.plans_markdown({"old.json": report(old), "new.json": {**report(new)}}).splitlines()[2:]
  train = [r for r in rows if "| train |" in r]
  assert len(train) == 1 and "`new.json`" in train[0] and "| 2.0 |" in train[0] and "| 4.0 |" in train[0]
  assert sum("| generate |" in r for r in rows) == 1  # the later report's, too
  # The same rows and tokens with images is another shape: both rows stay.
  imaged = report(new) | {"shapes": shapes | {"images": 2, "image_patches": 256}}
  rows = sweep.plans_markdown({"text.json": report(new), "imaged.json": imaged}).splitlines()[2:]
  train = [r for r in rows if "| train |" in r]
  assert len(train) == 2 and "| 16 x 64 |" in train[0] and "| 16 x 64, 2 x 256 patches |" in train[1]
  # So is the same step on another rollout mesh.
  elsewhere = report(new) | {"rollout_mesh": {"data": 2, "fsdp": 1, "tensor": 2}}
  rows = sweep.plans_markdown({"fsdp.json": report(new), "rollout.json": elsewhere}).splitlines()[2:]
  generate = [r for r in rows if "| generate |" in r]
  assert len(generate) == 2 and "| 1/4/1 |" in generate[0] and "| 2/1/2 |" in generate[1]
