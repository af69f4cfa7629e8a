"""End-to-end CA-TTS throughput (`python -m infer.bench --catts --out DIR`).

`infer.catts` on a checkpoint (default: the bundled CDRL policy) over the first `problems`
synthetic test problems at N = 1, 2, 4, ..., `n`, the policy as its own Expert, with the demo's
methods and decode length, in four modes in this one process: problem by problem after the
draw (`serial`, the reference), with the batched engine at the config's defaults (`batched`:
`solve_batch` problems through the modules together, `module_batch` auto, 1 on CPU), with
whole rounds per policy call (`batched_rounds`: module_batch = solve_batch), and the draw
alone (`draw_only`: majority voting over the same samples, nothing after the draw).

Each mode runs twice: `cold` loads the policy and compiles what it needs (what a user waits
for on a first, short run), then `warm` runs the same problems again into a second directory
with that loaded policy, every program already compiled: the rate a long run settles at, since
shapes are bucketed and the set of programs stops growing. report.json: each run's wall time,
problems/s and compile time (XLA's backend compile, summed), `catts_speedup` (batched over
serial, cold) and `catts_speedup_warm`, the same for batched_rounds (`rounds_speedup*`),
`catts_speedup_bound*` (draw_only over serial: the most an engine that draws the same samples
could gain), and how many answers (problem, method, N) each batched run shares with the serial one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import pathlib
import time
from typing import Any

from catts_jax import runs
from catts_jax.policy import forget_compiled
from catts_jax.tts import run as tts_run

METHODS = "catts,majority,deepconf,best-of-n,greedy"  # the demo's


@dataclasses.dataclass(frozen=True)
class Settings:
  ckpt: str
  problems: int = 64
  n: int = 16
  max_new_tokens: int = 64  # the samples' and re-answers' budget (the demo's)
  solve_batch: int = 32
  data_dir: str | None = None


def _answers(rows: list[dict]) -> dict:
  return {
    (r["id"], method, n): result["answer"]
    for r in rows
    for method, by_n in r.get("methods", {}).items()
    for n, result in (by_n.items() if method in ("catts", "majority", "deepconf", "best-of-n") else ())
  }


MODES = {
  "serial": {"serial": True},
  "batched": {},
  "batched_rounds": {"module_batch": None},  # None: solve_batch
  # The draw alone: the same problems, N and samples, majority voting only (no module, no
  # Expert, no greedy pass). Whatever an engine does after the draw, it cannot be faster.
  "draw_only": {"methods": "majority"},
}
ENGINES = ("batched", "batched_rounds")  # compared with serial, answer by answer


SPECIAL_IDS = {
  "image_token_id": "<|image_pad|>",
  "video_token_id": "<|video_pad|>",
  "vision_start_token_id": "<|vision_start|>",
  "vision_end_token_id": "<|vision_end|>",
  "bos_token_id": "<|endoftext|>",
  "eos_token_id": "<|im_end|>",
  "pad_token_id": "<|endoftext|>",
}


def shaped_checkpoint(out: pathlib.Path, shape: str, like: str | pathlib.Path) -> pathlib.Path:
  """A checkpoint of preset `shape`'s dimensions with random weights that speaks `like`'s
  tokenizer and processor (their special ids; the vocabulary keeps the shape's size, and ids
  past the tokenizer's decode to nothing): for timing a real size without its weights. Built
  in JAX (no torch), float32 params."""
  from flax import nnx
  from transformers import AutoTokenizer

  from catts_jax.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL, presets, save_hf

  tokenizer = AutoTokenizer.from_pretrained(like)
  ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL_IDS.items()}
  if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
    raise ValueError(f"--shape: {like}'s tokenizer lacks a Qwen2.5-VL special token ({ids})")
  shaped = {"model_type": "qwen2_5_vl", **presets.hf_config(shape)}  # "bench" leaves the type out
  cfg = ModelConfig.from_hf_dict(shaped, source=f"preset {shape}").replace(**ids)
  if max(ids.values()) >= cfg.text.vocab_size:
    raise ValueError(
      f"--shape {shape}: vocabulary {cfg.text.vocab_size} is smaller than {like}'s special ids"
    )
  return save_hf(Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)), out, processor_dir=like)


class _CompileClock:
  """Seconds XLA spends compiling (jax.monitoring's backend compile events), while active."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.seconds, self.active = 0.0, False
    from jax import monitoring

    monitoring.register_event_duration_secs_listener(self._record)

  def _record(self, event: str, seconds: float, **_) -> None:
    if self.active and event == self.EVENT:
      self.seconds += seconds

  def timed(self, fn) -> tuple[float, float]:
    """(wall seconds, compile seconds) of fn()."""
    self.seconds, self.active = 0.0, True
    start = time.perf_counter()
    try:
      fn()
    finally:
      self.active = False
    return time.perf_counter() - start, self.seconds


def _fresh(out: pathlib.Path) -> pathlib.Path:
  for name in ("results.jsonl", "run.json", "report.json"):
    (out / name).unlink(missing_ok=True)
  return out


def run_mode(
  settings: Settings, catts_cfg, out: pathlib.Path, mode: dict, clock: _CompileClock
) -> tuple[dict, dict]:
  """One mode cold (out/cold) then warm (out/warm); ({cold, warm} figures, the cold run's answers)."""
  cfg = copy.deepcopy(catts_cfg)
  cfg.sampling.max_new_tokens = cfg.reflection.max_new_tokens = settings.max_new_tokens
  cfg.solve_batch = settings.solve_batch
  cfg.serial = mode.get("serial", False)
  if "module_batch" in mode:
    cfg.module_batch = settings.solve_batch
  ns = ",".join(str(1 << k) for k in range(settings.n.bit_length()) if 1 << k <= settings.n)

  def job(target: pathlib.Path):
    return tts_run.prepare(
      copy.deepcopy(cfg), ckpt=settings.ckpt, out=_fresh(target), benchmark="synthetic", split="test",
      data_dir=settings.data_dir, limit=settings.problems, ns=ns, methods=mode.get("methods", METHODS), expert="self",
    )  # fmt: skip

  figures, answers, policy = {}, {}, None
  for phase in ("cold", "warm"):
    one = job(out / phase)

    def go(one=one, phase=phase):
      nonlocal policy
      if phase == "cold":
        # Loading and compiling are part of the cold run; programs an earlier mode compiled
        # (policies of one architecture share them) would otherwise be free here.
        forget_compiled()
        policy = one.load_policy()
      one.run(policy=policy)

    wall, compile_s = clock.timed(go)
    rows = runs.read_rows(out / phase / "results.jsonl")
    errors = sum("error" in r for r in rows)
    figures[phase] = {
      "wall_s": wall,
      "problems_per_s": len(rows) / wall,
      "compile_s": compile_s,
      "errors": errors,
    }
    answers[phase] = _answers(rows)
  figures["warm"]["same_answers_as_cold"] = answers["warm"] == answers["cold"]
  return figures, answers["cold"]


def run(settings: Settings, catts_cfg, out: pathlib.Path) -> dict[str, Any]:
  """Every mode into out/MODE/{cold,warm} (each starts afresh); returns report.json's content."""
  logging.getLogger("catts_jax.tts.expert").setLevel(logging.ERROR)  # the self Expert's unparseable replies
  report: dict[str, Any] = {"args": dataclasses.asdict(settings)}
  answers, clock = {}, _CompileClock()
  for mode, overrides in MODES.items():
    report[mode], answers[mode] = run_mode(settings, catts_cfg, out / mode, overrides, clock)
  for phase, suffix in (("cold", ""), ("warm", "_warm")):
    speed = {mode: report[mode][phase]["problems_per_s"] for mode in MODES}
    report["catts_speedup" + suffix] = speed["batched"] / speed["serial"]
    report["rounds_speedup" + suffix] = speed["batched_rounds"] / speed["serial"]
    report["catts_speedup_bound" + suffix] = speed["draw_only"] / speed["serial"]
  for mode in ENGINES:
    same = [k for k in answers["serial"] if answers[mode].get(k) == answers["serial"][k]]
    report[mode]["same_answers"] = {"equal": len(same), "of": len(answers["serial"])}
  return report


def table(report: dict) -> str:
  lines = [
    "| engine | run | wall s | compile s | problems/s | errors | answers as serial's |",
    "|---|---|---|---|---|---|---|",
  ]
  for mode in MODES:
    same = report[mode].get("same_answers")
    shared = f"{same['equal']} of {same['of']}" if same else "-"
    for phase in ("cold", "warm"):
      r = report[mode][phase]
      lines.append(
        f"| {mode} | {phase} | {r['wall_s']:.1f} | {r['compile_s']:.1f} | {r['problems_per_s']:.3f} | "
        f"{r['errors']} | {shared if phase == 'cold' else '-'} |"
      )
  speedups = (
    f"cold: catts_speedup {report['catts_speedup']:.2f}x, rounds_speedup {report['rounds_speedup']:.2f}x; "
    f"warm: catts_speedup {report['catts_speedup_warm']:.2f}x, rounds_speedup {report['rounds_speedup_warm']:.2f}x; "
    f"the most any engine could gain over serial (the draw alone, draw_only): "
    f"{report['catts_speedup_bound']:.2f}x cold, {report['catts_speedup_bound_warm']:.2f}x warm"
  )
  return "\n".join([*lines, "", speedups])


def write(out: pathlib.Path, report: dict) -> None:
  runs.write_json(out / "report.json", report)
  runs.write_text(out / "report.md", "# CA-TTS throughput\n\n" + table(report) + "\n")
