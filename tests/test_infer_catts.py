"""`python -m infer.catts` end to end on a tiny checkpoint over real Math-Vision problems: the
policy as its own expert, a kill and a resume, a faulty expert server killed mid-run, and
`transformers serve` as the Expert."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serving import transformers_serve

from catts_jax.policy import Policy
from catts_jax.tts import run, summary
from catts_jax.tts.methods import DEFAULT_METHODS
from configs import catts as catts_config
from infer import catts

SHARED = Path(__file__).parents[2] / "shared/data/math-vision-testmini"
if not SHARED.is_dir() and os.environ.get("CI"):
  raise RuntimeError(f"{SHARED} missing")
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")
ROOT = Path(__file__).parents[1]
SMALL = [  # short decodes everywhere; every gate open, so every module and role runs
  "--config.sampling.max_new_tokens=4",
  "--config.reflection.max_new_tokens=4",
  "--config.expert.planner_max_tokens=4",
  "--config.expert.voter_max_tokens=4",
  "--config.expert.critic_max_tokens=4",
  "--config.tts.reflection_threshold=1.01",
  "--config.tts.selfcheck_margin=1.01",
  "--config.tts.adaptive_min_samples=1",
  "--config.batch_size=4",
]
_POLICIES = {}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def share_policies(monkeypatch):
  """In-process runs share one loaded policy per checkpoint (and its compiled functions)."""
  load = Policy.from_pretrained

  def cached(cls, path, **kwargs):
    key = (str(path), json.dumps(kwargs, default=str, sort_keys=True))
    if key not in _POLICIES:
      _POLICIES[key] = load(path, **kwargs)
    return _POLICIES[key]

  monkeypatch.setattr(Policy, "from_pretrained", classmethod(cached))


@pytest.fixture
def shared_policy(monkeypatch):
  share_policies(monkeypatch)


@pytest.fixture
def online(monkeypatch):
  """conftest sets HF_HUB_OFFLINE, which makes huggingface_hub refuse even 127.0.0.1."""
  import huggingface_hub.constants

  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def args_for(ckpt, out, tfds, *extra, limit=4, ns="2,4"):
  return [
    "--ckpt", str(ckpt), "--benchmark", "mathvision", "--data", str(SHARED), "--split", "testmini",
    "--data_dir", str(tfds), "--limit", str(limit), "--n", ns, "--out", str(out), *SMALL, *extra,
  ]  # fmt: skip


def read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def diff_rows(a, b, path="row"):
  """The paths at which two JSON values differ: texts, answers, verdicts and counts exactly,
  floats to float32 rounding (a problem's scores may come from a batch of other shapes):
  relative 1e-5, and absolute 1e-7 for the self-check's drops, differences of two
  confidences of ~1e-2 that agree to float32's ~1e-9 there."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b)) for d in diff_rows(a.get(k), b.get(k), f"{path}.{k}")]
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_rows(x, y, f"{path}[{i}]")]
  if type(a) is float and type(b) is float and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7):
    return []
  return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def strip(rows):
  """Rows without what varies from run to run (timings, latencies)."""
  out = []
  for r in rows:
    r = {k: v for k, v in r.items() if k != "timing"}
    r["expert_calls"] = [{k: v for k, v in c.items() if k != "latency_s"} for c in r["expert_calls"]]
    out.append(r)
  return out


@pytest.fixture(scope="module")
def self_run(tiny_ckpt, tfds_dir, tmp_path_factory):
  """One uninterrupted run with the policy as its own expert (no server anywhere)."""
  out = tmp_path_factory.mktemp("self") / "run"
  # module_batch: the round's re-answers, self-checks and self-Expert prompts batched (on CPU
  # the default takes them one at a time).
  args = args_for(tiny_ckpt, out, tfds_dir, "--expert", "self", "--config.module_batch=8")
  with pytest.MonkeyPatch.context() as mp:
    share_policies(mp)
    assert catts.main(args) == 0
  return out, args


def test_self_expert_end_to_end(self_run, capsys):
  out, args = self_run
  rows = read_jsonl(out / "results.jsonl")
  assert len(rows) == 4 and not [r for r in rows if "error" in r]
  for r in rows:
    assert list(r["methods"]) == list(DEFAULT_METHODS)
    assert len(r["samples"]) == 4 and r["greedy"]["source"] == "greedy" and r["vcd"]["source"] == "vcd"
    for n in ("2", "4"):
      c = r["methods"]["catts"][n]
      assert [m["module"] for m in c["modules"]][:3] == [
        "self_consistency",
        "self_reflection",
        "visual_self_check",
      ]
      assert c["modules"][1]["ran"] and c["modules"][2]["ran"]  # gates opened by the config
      assert c["table"]["winner"] == (c["answer"] or None)
    roles = {(c["role"], c["expert"]) for c in r["expert_calls"]}
    assert roles == {("planner", "self"), ("voter", "self"), ("critic", "self")}
  report = json.loads((out / "report.json").read_text())
  assert (report["problems"], report["errors"], report["ns"], report["expert"]) == (4, 0, [2, 4], "self")
  assert json.loads((out / "run.json").read_text())["config"]["dtype"] == "float32"  # auto, on CPU
  assert [t["method"] for t in report["table"]] == list(DEFAULT_METHODS)
  for m in ("catts", "majority", "deepconf", "best-of-n"):  # each N's accuracy is its rows' mean
    for n in ("2", "4"):
      assert report["accuracy"][m][n] == pytest.approx(
        sum(r["methods"][m][n]["correct"] for r in rows) / len(rows)
      )
  assert set(report["slope"]) == {"catts", "majority", "deepconf", "deepconf-online", "best-of-n"}
  assert [p["cap"] for p in report["adaptive"]["points"]] == [2, 4]
  assert set(report["expert_calls"]) == {"planner", "voter", "critic"}
  png = out / "accuracy_vs_n.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
  assert "| method | N=2 | N=4 | ece | auroc | beta |" in (out / "report.md").read_text()

  # A rerun resumes: nothing is redone; other settings in the same --out are refused.
  capsys.readouterr()
  assert catts.main(args) == 0
  assert "catts" in capsys.readouterr().out
  assert strip(read_jsonl(out / "results.jsonl")) == strip(rows)
  assert catts.main([*args, "--n", "1,4"]) == 2
  assert "holds a run with other ns" in capsys.readouterr().err


def test_killed_run_resumes_to_the_uninterrupted_result(
  self_run, tiny_ckpt, tfds_dir, tmp_path, shared_policy
):
  _, args = self_run
  out = tmp_path / "killed"
  args = [*args[: args.index("--out")], "--out", str(out), *args[args.index("--out") + 2 :]]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
  proc = subprocess.Popen([sys.executable, "-m", "infer.catts", *args], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
  results, deadline = out / "results.jsonl", time.monotonic() + 240
  try:
    while not (results.is_file() and results.read_text().count("\n") >= 1):
      assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
      assert time.monotonic() < deadline, "no row written"
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  written = results.read_text().count("\n")
  assert 1 <= written < 4, f"killed after {written} rows"
  assert catts.main(args) == 0
  by_index = lambda rows: sorted(rows, key=lambda r: r["index"])  # noqa: E731 - rows land as problems finish
  rows = by_index(read_jsonl(results))
  expected = by_index(read_jsonl(self_run[0] / "results.jsonl"))
  assert [r["id"] for r in rows] == [r["id"] for r in expected]
  differences = diff_rows(strip(rows), strip(expected))
  assert not differences, "\n".join(differences[:20])


def poll_lines(path, count, then, stop):
  while not stop.is_set():
    if path.is_file() and path.read_text().count("\n") >= count:
      then()
      return
    time.sleep(0.02)


def test_faulty_expert_server_killed_mid_run(tiny_ckpt, tfds_dir, tmp_path, shared_policy, online, capsys):
  log = tmp_path / "requests.log"
  # The first "ok" answers the start-up probe (--expert_check).
  script = [
    "ok",
    "ok",
    "500",
    "500",
    "garbled",
    "garbled",
    "sleep",
    "sleep",
    "badjson",
    "badjson",
    "badjson",
    "ok",
  ]
  server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "expert_server.py"), str(log), *script],
                            stdout=subprocess.PIPE)  # fmt: skip
  stop = threading.Event()
  try:
    port = int(server.stdout.readline())
    watcher = threading.Thread(target=poll_lines, args=(log, 17, server.kill, stop), daemon=True)
    watcher.start()
    # One call at a time, so each call's attempts meet the script's faults in a row.
    faults = ["--config.expert.timeout_s=0.5", "--config.expert.max_retries=1", "--config.expert.backoff_s=0.01",
              "--config.expert.max_backoff_s=0.02", "--config.expert.concurrency=1"]  # fmt: skip
    out = tmp_path / "run"
    args = args_for(tiny_ckpt, out, tfds_dir, "--expert", f"http://127.0.0.1:{port}/v1", *faults)
    assert catts.main(args) == 0
    assert server.poll() is not None, "the server was not killed mid-run"
  finally:
    stop.set()
    server.kill()
    server.wait()
  rows = read_jsonl(out / "results.jsonl")
  assert len(rows) == 4 and not [r for r in rows if "error" in r]  # every problem has its result
  for r in rows:
    assert set(r["methods"]["catts"]) == {"2", "4"} and r["expert_calls"]
  calls = [c for r in rows for c in r["expert_calls"]]
  errors = " | ".join(c["error"] for c in calls if c["error"])
  for kind in ("HTTP 500", "malformed response", "timeout after 0.5 s", "connection error"):
    assert kind in errors, f"{kind!r} not recorded in {errors}"
  assert any(c["ok"] and c["role"] == "planner" and not c["fallback"] for c in calls)
  assert any(c["fallback"] or "unparseable" in (c["error"] or "") for c in calls)  # badjson
  assert rows[-1]["expert_calls"][-1]["error"].startswith("connection error")  # after the kill
  report = json.loads((out / "report.json").read_text())
  assert report["errors"] == 0 and sum(s["failed"] for s in report["expert_calls"].values()) > 0
  # The failures also show where the run ends: a line per role on stdout.
  printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("expert ")]
  assert [line.split(":")[0] for line in printed] == [f"expert {role}" for role in report["expert_calls"]]
  planner = report["expert_calls"]["planner"]
  assert (
    f"expert planner: {planner['calls']} calls (+{planner['cached']} reused), {planner['ok']} ok, "
    f"{planner['failed']} failed" in printed[0]
  )
  assert any("most common error" in line for line in printed)


@pytest.mark.parametrize("action,message", [(None, "the probe call failed (connection error"),
                                            ("badjson", "its reply to a probe is no module plan")])  # fmt: skip
def test_expert_check_stops_before_the_run(action, message, tiny_ckpt, tfds_dir, tmp_path, capsys, online):
  """A remote Expert that cannot be reached, or answers the probe with no plan, stops the run
  before any model is loaded, with one line naming it; --noexpert_check runs anyway."""
  server, url = None, "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
  if action:
    log = tmp_path / "requests.log"
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "expert_server.py"), str(log), action],
                              stdout=subprocess.PIPE)  # fmt: skip
    url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
  try:
    fast = ["--config.expert.max_retries=0", "--config.expert.timeout_s=2"]
    args = args_for(tiny_ckpt, tmp_path / "run", tfds_dir, "--expert", url, *fast)
    assert exit_code(args) == 2
    err = capsys.readouterr().err
    assert f"--expert {url}: {message}" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "results.jsonl").exists()
  finally:
    if server is not None:
      server.kill()
      server.wait()


@pytest.fixture
def transformers_server(tiny_ckpt, tmp_path):
  """`transformers serve CKPT` on 127.0.0.1 (extra transformers[serving])."""
  with transformers_serve(tiny_ckpt, tmp_path / "serve.log") as url:
    yield url + "/v1"


def test_transformers_serve_as_the_expert(
  transformers_server, tiny_ckpt, tfds_dir, tmp_path, shared_policy, online
):
  out = tmp_path / "run"
  # The random model writes no plan, so it would fail the start-up probe: skipped.
  args = args_for(tiny_ckpt, out, tfds_dir, "--expert", transformers_server, "--config.expert.timeout_s=30",
                  "--noexpert_check", limit=8)  # fmt: skip
  assert catts.main(args) == 0
  rows = read_jsonl(out / "results.jsonl")
  assert len(rows) == 8 and not [r for r in rows if "error" in r]
  for r in rows:
    by_role = {}
    for c in r["expert_calls"]:
      by_role.setdefault(c["role"], []).append(c)
      assert c["expert"] == transformers_server and (c["attempts"] >= 1 or c["cached"])
    assert set(by_role) == {"planner", "voter", "critic"}
    # Real HTTP calls: the random model writes no plan (default order) and no probabilities.
    assert all(c["ok"] and c["fallback"] for c in by_role["planner"])
    assert all(
      c["error"] and "unparseable voter output" in c["error"] for c in by_role["voter"] if not c["ok"]
    )
    assert set(r["methods"]["catts"]) == {"2", "4"}
  critiques = [
    m for r in rows for m in r["methods"]["catts"]["4"]["modules"] if m["module"] == "self_reflection"
  ]
  assert any(m["ran"] for m in critiques) or all("critic failed" in m["reason"] for m in critiques)
  report = json.loads((out / "report.json").read_text())
  assert report["problems"] == 8 and report["expert"] == transformers_server


@pytest.mark.parametrize(
  "extra,message",
  [
    (["--methods", "catts,beam"], "--methods: unknown ['beam']"),
    (["--n", "0,2"], "expected comma-separated positive integers"),
    (["--config.tts.nope=1"], "unknown config key 'tts.nope'"),
    (["--config.tts.reflection_signal=loudness"], "reflection_signal must be one of"),
    (["--expert", "ftp://x"], "unknown expert spec"),
    (["--config.dtype=fp8"], "dtype='fp8': expected auto or one of"),
    (["--config.planner.mode=later"], "planner.mode='later': expected one of paper, adaptive"),
  ],
)
def test_bad_input_is_a_clear_error(extra, message, tiny_ckpt, tfds_dir, tmp_path, capsys):
  assert exit_code([*args_for(tiny_ckpt, tmp_path / "out", tfds_dir), *extra]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1  # one line


def exit_code(argv):
  """main's return value, or the status of the SystemExit that flag parsing raises (a bad
  flag or config override)."""
  try:
    return catts.main(argv)
  except SystemExit as e:
    return e.code


def test_help_lists_the_flags(capsys):
  assert exit_code(["--help"]) == 0
  text = capsys.readouterr().out
  for flag in ("--config", "--ckpt", "--benchmark", "--data", "--split", "--data_dir", "--limit", "--n",
               "--methods", "--expert", "--out"):  # fmt: skip
    assert f"{flag}:" in text, flag


def test_missing_data_and_checkpoint(tiny_ckpt, tmp_path, capsys):
  args = ["--benchmark", "mathvision", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
  assert catts.main(["--ckpt", str(tiny_ckpt), *args]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert catts.main(["--ckpt", str(tmp_path), *args]) == 2
  assert "no config.json" in capsys.readouterr().err


def test_summary_by_hand():
  """Accuracy per method and N over the problems without errors, slope, and catts-adaptive
  stopping on the confidence-weighted margin of the first n samples."""
  from catts_jax.tts.voting import TTSConfig

  def rec(correct):
    return {"answer": "x", "correct": correct, "confidence": 0.9 if correct else 0.2}

  def row(i, samples, catts_ok, majority_ok, greedy_ok):
    catts_by_n = {
      str(n): {**rec(ok), "plan": {"by": "expert"}, "modules": []} for n, ok in zip((1, 2, 4), catts_ok)
    }
    return {
      "id": str(i),
      "samples": [{"answer": a, "confidence": c, "correct": a == "b"} for a, c in samples],
      "methods": {
        "catts": catts_by_n,
        "majority": {str(n): rec(ok) for n, ok in zip((1, 2, 4), majority_ok)},
        "greedy": rec(greedy_ok),
      },
      "expert_calls": [
        {"role": "voter", "ok": False, "cached": False, "latency_s": 0.5, "error": "HTTP 500"}
      ],
    }

  rows = [
    # Unanimous at n=2: margin 1 >= 0.6 stops there.
    row(
      0, [("a", 0.9), ("a", 0.8), ("b", 0.9), ("c", 0.9)], (False, True, False), (False, False, True), True
    ),
    # Never settles: runs to the cap.
    row(
      1, [("a", 0.5), ("b", 0.5), ("a", 0.5), ("b", 0.5)], (False, False, True), (False, True, True), False
    ),
    {"id": "2", "error": "2: image 0 cannot be decoded"},
  ]
  tts = TTSConfig(adaptive=True, adaptive_margin=0.6, adaptive_min_samples=2)
  categories = {"0": "walls", "1": "bars", "2": "walls"}
  s = summary.summarize(rows, [1, 2, 4], ["catts", "majority", "greedy"], tts, categories)
  assert (s["problems"], s["errors"], s["error_ids"]) == (3, 1, ["2"])
  assert s["accuracy"]["catts"] == {"1": 0.0, "2": 0.5, "4": 0.5}
  assert s["accuracy"]["majority"] == {"1": 0.0, "2": 0.5, "4": 1.0}
  assert s["accuracy"]["greedy"] == {"1": 0.5, "2": 0.5, "4": 0.5}
  assert s["slope"]["majority"]["beta"] == pytest.approx(50.0)  # 0, 50, 100 points at log2 N = 0, 1, 2
  assert "greedy" not in s["slope"]
  assert math.isnan(s["calibration"]["majority"]["4"]["auroc"])  # all correct: one class
  assert s["adaptive"]["points"] == [
    {"cap": 1, "mean_samples": 1.0, "accuracy": 0.0},
    {"cap": 2, "mean_samples": 2.0, "accuracy": 0.5},
    {"cap": 4, "mean_samples": 3.0, "accuracy": 1.0},  # problem 0 stops at 2 (right), 1 runs to 4 (right)
  ]
  assert s["expert_calls"]["voter"] == {
    "calls": 2, "ok": 0, "failed": 2, "cached": 0, "fallback": 0, "mean_latency_s": 0.5, "errors": {"HTTP 500": 2}
  }  # fmt: skip
  # The "b" samples are right. Problem 0: b at 0.9 against a 0.9, a 0.8, c 0.9 wins 2 of 3
  # pairs; problem 1: all at 0.5, 4 tied pairs.
  pool = {"samples": 8, "accuracy": 3 / 8, "any_right": 1.0, "mixed_problems": 2, "weight": "confidence"}
  assert s["single_samples"] == {**pool, "within_problem_auroc": pytest.approx((2 + 2) / (3 + 4))}
  walls, bars = s["by_category"]["walls"], s["by_category"]["bars"]
  assert list(s["by_category"]) == ["bars", "walls"] and walls["problems"] == 1  # the failed one left out
  assert walls["accuracy"] == {"catts": 0.0, "majority": 1.0, "greedy": 1.0}
  assert bars["accuracy"] == {"catts": 1.0, "majority": 1.0, "greedy": 0.0}
  assert walls["single_samples"]["within_problem_auroc"] == pytest.approx(2 / 3)
  assert bars["single_samples"]["within_problem_auroc"] == 0.5
  assert "by_category" not in summary.summarize(rows, [1, 2, 4], ["majority"], tts, {"0": "", "1": ""})
  assert [r["method"] for r in s["table"]] == ["catts", "majority", "greedy"]
  assert s["table"][1]["N=4"] == 100.0 and s["table"][2]["beta"] == "-"
  fit = s["slope"]["majority"]
  assert fit["low"] <= fit["beta"] <= fit["high"]
  assert s["table"][1]["beta 95% CI"] == f"[{fit['low']:.2f}, {fit['high']:.2f}]"
  assert s["table"][2]["beta 95% CI"] == "-"


def test_auto_dtype_is_bfloat16_on_accelerators_only():
  assert [run.compute_dtype("auto", b) for b in ("gpu", "tpu", "cpu")] == ["bfloat16", "bfloat16", "float32"]
  assert run.compute_dtype("float16", "gpu") == "float16"  # an explicit dtype is kept


def test_module_batch_auto_batches_on_accelerators_only():
  cfg = catts_config.get_config()
  assert [run.module_batch(cfg, b) for b in ("gpu", "tpu", "cpu")] == [cfg.solve_batch, cfg.solve_batch, 1]
  cfg.module_batch = 5
  assert run.module_batch(cfg, "cpu") == 5  # an explicit limit is kept
  cfg.module_batch = -1
  with pytest.raises(ValueError, match="module_batch=-1"):
    run.module_batch(cfg, "gpu")


def test_batched_engine_equals_serial(self_run, tmp_path, shared_policy):
  """The batched engine (the 4 problems' modules together: batched self-Expert decodes,
  re-answers and self-checks) writes the rows of the one-problem-at-a-time reference."""
  _, args = self_run
  out = tmp_path / "serial"
  args = [*args[: args.index("--out")], "--out", str(out), *args[args.index("--out") + 2 :]]
  assert catts.main([*args, "--config.serial=True"]) == 0
  by_index = lambda rows: sorted(rows, key=lambda r: r["index"])  # noqa: E731
  serial = strip(by_index(read_jsonl(out / "results.jsonl")))
  batched = strip(by_index(read_jsonl(self_run[0] / "results.jsonl")))
  assert [r["id"] for r in serial] == [r["id"] for r in batched]
  differences = diff_rows(serial, batched)
  assert not differences, "\n".join(differences[:20])


def test_run_refuses_a_policy_loaded_for_other_settings(tiny_ckpt, tfds_dir, tmp_path):
  """Job.run(policy=) takes only a policy loaded as the job would load it (job.load_policy)."""
  from types import SimpleNamespace

  from catts_jax.scoring import ConfidenceConfig

  cfg = catts_config.get_config()
  job = run.prepare(
    cfg, ckpt=tiny_ckpt, benchmark="mathvision", data_path=str(SHARED), split="testmini",
    data_dir=str(tfds_dir), out=tmp_path, limit=1, ns="1", expert="none",
  )  # fmt: skip
  assert cfg.dtype == "auto" and job.cfg.dtype == "float32"  # resolved on the job's copy only
  window = ConfidenceConfig(window=job.tts.deepconf_window)
  for dtype, confidence in (("bfloat16", window), (job.cfg.dtype, ConfidenceConfig(window=7))):
    other = SimpleNamespace(cfg=SimpleNamespace(dtype=dtype), confidence=confidence)
    with pytest.raises(ValueError, match="a policy loaded for other settings"):
      job.run(policy=other)
  assert not (tmp_path / "results.jsonl").exists()
