"""Scoring and generation throughput of catts_jax against transformers, with rooflines
(`python -m infer.bench`), and the synthetic rows both benchmarks feed their models.

One fixed Qwen2.5-VL-shaped model with random weights, preset "bench" of
catts_jax/models/qwen2_5_vl/presets.py (text: hidden 512, 8 layers, 8 heads, 2 KV heads, MLP
1408, vocab 8192, mrope [8, 12, 12]; a 2-block vision tower; the report records the parameter
count), so figures stay comparable over time. Both sides get the same weights and inputs, run in
this one process, alternating; the first call of each shape (compilation, warm-up) is
excluded and reported separately; times are medians over repeats.

- scoring: `score_batch` rows x `score_len` tokens, text only and with one 224x224 image per
  row; transformers does forward + log_softmax + gather (what teacher-forced scoring needs).
- generation: `prompt_len`-token prompts, `new_tokens` new tokens, sampling at temperature 1
  with EOS disabled so both produce the same number of tokens; batch sizes `gen_batches`;
  catts_jax's KV cache grows by doubling (`grow_cache`, as in CA-TTS), transformers' by the token.
- roofline: the matmul ceiling and memory bandwidth are measured on the spot; each case's
  floor is max(FLOPs / ceiling, bytes read / bandwidth) summed over its steps
  (`roofline.scoring_cost`, `roofline.generation_cost`), and each side's fraction is
  floor / measured time.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
import time

import jax
import numpy as np

from catts_jax import roofline, runs
from catts_jax.models.qwen2_5_vl import ModelConfig, get_rope_index, load_hf, presets
from catts_jax.processing import Batch, ScoringBatch, image_slots, image_token_index
from catts_jax.sampling import Sampler, SamplingConfig
from catts_jax.scoring import Scorer

SHAPE = presets.hf_config("bench")
VOCAB = SHAPE["text_config"]["vocab_size"]
IMAGE = SHAPE["image_token_id"]
PAD = SHAPE["text_config"]["pad_token_id"]
IMAGE_PATCHES = 256  # a 224x224 image: 16 x 16 patches -> 64 tokens


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `run` measures (the flags of `infer.bench`); recorded as the report's "args"."""

  device: str = "cpu"  # "cpu" (float32) or "gpu" (float32 and bfloat16)
  repeats: int = 5  # timed rounds per case (median)
  score_batch: int = 8
  score_len: int = 256
  gen_batches: tuple[int, ...] = (1, 8, 32)
  prompt_len: int = 32
  new_tokens: int = 64


def synthetic_rows(
  rng: np.random.Generator, cfg: ModelConfig, rows: int, length: int, image_patches: int, high: int
) -> Batch:
  """`rows` rows of `length` random token ids in [0, `high`) and mask 1, with MRoPE positions;
  with `image_patches` (a square of a multiple of the merge size), each row holds its own
  square image (random pixels, [rows * image_patches, patch_dim] before `image_slots`) after
  8 tokens: one slot a row, no row sharing another's."""
  ids = rng.integers(0, high, (rows, length)).astype(np.int32)
  grid = pixels = patch_pos = patch_image = index = None
  merge = cfg.vision.spatial_merge_size
  if image_patches:
    side = int(round(image_patches**0.5))
    tokens = image_patches // merge**2
    ids[:, 8] = cfg.vision_start_token_id
    ids[:, 9 : 9 + tokens] = cfg.image_token_id
    ids[:, 9 + tokens] = cfg.vision_end_token_id
    grid = np.tile(np.asarray([1, side, side], np.int32), (rows, 1))
    pixels = rng.standard_normal((rows * image_patches, cfg.vision.patch_dim)).astype(np.float32)
    pixels, patch_pos, patch_image = image_slots(pixels, grid, merge, (rows,), (image_patches,))
    index = image_token_index(ids, cfg.image_token_id, [[b] for b in range(rows)], grid, image_patches, merge)
  mask = np.ones_like(ids)
  positions, deltas = get_rope_index(
    ids, mask, grid, image_token_id=cfg.image_token_id, spatial_merge_size=merge
  )
  return Batch(
    input_ids=ids,
    attention_mask=mask,
    positions=positions,
    rope_deltas=deltas,
    pixel_values=pixels,
    patch_pos=patch_pos,
    patch_image=patch_image,
    image_index=index,
    image_grid_thw=grid,
    num_rows=rows,
  )


def hf_inputs(batch: Batch, device, torch) -> dict:
  """`batch` as transformers' keyword arguments, on torch device `device`."""
  out = {
    "input_ids": torch.from_numpy(batch.input_ids.astype(np.int64)).to(device),
    "attention_mask": torch.from_numpy(batch.attention_mask.astype(np.int64)).to(device),
  }
  if batch.pixel_values is not None:
    flat = batch.pixel_values[batch.patch_image >= 0]  # the processor's layout: all patches in order
    out["pixel_values"] = torch.from_numpy(flat).to(device)
    out["image_grid_thw"] = torch.from_numpy(batch.image_grid_thw.astype(np.int64)).to(device)
    out["mm_token_type_ids"] = (out["input_ids"] == IMAGE).long()
  return out


def timed(fns: dict, repeats: int) -> dict:
  """First call of each (compile + warm-up), then `repeats` rounds alternating the sides:
  their median seconds, first-call seconds and every round's seconds (`times_s`)."""
  first, times = {}, {name: [] for name in fns}
  for name, fn in fns.items():
    start = time.perf_counter()
    fn()
    first[name] = time.perf_counter() - start
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  medians = {name: float(np.median(t)) for name, t in times.items()}
  return {"median_s": medians, "first_call_s": first, "times_s": times}


def random_checkpoint(prefix: str = "catts_bench_") -> pathlib.Path:
  """A new temporary directory holding the bench model with random weights (torch seed 0),
  saved by transformers."""
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  workdir = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
  torch.manual_seed(0)
  Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**SHAPE)).save_pretrained(workdir)
  return workdir


def run(settings: Settings) -> dict:
  """Every case of the module docstring under `settings`; the report (report.json's content).
  Sets jax's default matmul precision to "highest" (float32 means float32 on both sides)."""
  import torch

  device = "cuda" if settings.device == "gpu" else "cpu"
  # float32 means float32 on both sides (no TF32 on GPUs; torch's matmuls default to fp32 too).
  jax.config.update("jax_default_matmul_precision", "highest")
  rng = np.random.default_rng(0)
  workdir = random_checkpoint()
  from transformers import Qwen2_5_VLForConditionalGeneration

  base_cfg = ModelConfig.from_pretrained(workdir)

  jax_ceiling = roofline.measure_matmul_flops()
  torch_ceiling = roofline.measure_torch_matmul_flops(device=device)
  bandwidth = roofline.measure_read_bandwidth()
  report = {
    "device": jax.devices()[0].device_kind,
    "params": int(
      sum(p.numel() for p in Qwen2_5_VLForConditionalGeneration.from_pretrained(workdir).parameters())
    ),
    "machine": {
      "jax_matmul_gflops_fp32": jax_ceiling / 1e9,
      "torch_matmul_gflops_fp32": torch_ceiling / 1e9,
      "read_bandwidth_gbs": bandwidth / 1e9,
    },
    "runs": [],
  }
  dtypes = ["float32", "bfloat16"] if settings.device == "gpu" else ["float32"]
  for dtype in dtypes:
    tdtype = getattr(torch, dtype)
    ceiling = max(jax_ceiling, torch_ceiling)
    if dtype == "bfloat16":
      ceiling = roofline.measure_matmul_flops(dtype=jax.numpy.bfloat16)
      report["machine"]["jax_matmul_gflops_bf16"] = ceiling / 1e9
    dbytes = 2 if dtype == "bfloat16" else 4
    cfg = base_cfg.replace(dtype=dtype, param_dtype=dtype)
    model = load_hf(workdir, cfg)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(workdir, dtype=tdtype).to(device).eval()
    scorer, sampler = Scorer(model), Sampler(model, PAD)

    ctx = dict(
      cfg=cfg, hf=hf, device=device, torch=torch, ceiling=ceiling, bandwidth=bandwidth, dbytes=dbytes
    )
    for image in (False, True):
      report["runs"].append(score_case(rng, scorer, settings, image=image, **ctx))
    for rows in settings.gen_batches:
      report["runs"].append(generate_case(rng, sampler, settings, rows, **ctx))
  report["ceiling_note"] = (
    "roofline ceiling = max(jax, torch) measured matmul FLOP/s for fp32; jax bf16 for bf16"
  )
  report["args"] = dataclasses.asdict(settings)
  return report


def score_case(rng, scorer, settings, *, image, cfg, hf, device, torch, ceiling, bandwidth, dbytes) -> dict:
  """One scoring case: catts_jax's `Scorer` against transformers' forward + log-softmax + gather."""
  rows, length = settings.score_batch, settings.score_len
  patches = IMAGE_PATCHES if image else 0
  batch = synthetic_rows(rng, cfg, rows, length, patches, VOCAB - 64)
  sb = ScoringBatch(batch, np.ones((rows, length - 1), np.int32), length - 1)
  inputs = hf_inputs(batch, device, torch)

  def theirs():
    with torch.no_grad():
      logits = hf(**inputs).logits[:, :-1].float()
      return torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][:, 1:, None]).cpu()

  t = timed({"catts_jax": lambda: scorer(sb), "transformers": theirs}, settings.repeats)
  flops, floor = roofline.scoring_cost(cfg, rows, length, patches, dbytes, ceiling, bandwidth)
  return case_report(
    "scoring", cfg.dtype, rows, rows * length, t, floor, flops, ceiling, bandwidth, image=image
  )


def generate_case(
  rng, sampler, settings, rows, *, cfg, hf, device, torch, ceiling, bandwidth, dbytes
) -> dict:
  """One generation case: catts_jax's `Sampler` against `hf.generate`, same length, no EOS."""
  p, new = settings.prompt_len, settings.new_tokens
  batch = synthetic_rows(rng, cfg, rows, p, 0, VOCAB - 64)
  inputs = hf_inputs(batch, device, torch)
  # The cache grows as CA-TTS's does (configs/catts.py), reading about the filled slots, as
  # transformers' growing cache does.
  scfg = SamplingConfig(max_new_tokens=new, temperature=1.0, stop_ids=(), grow_cache=True)

  def theirs():
    with torch.no_grad():
      return hf.generate(
        **inputs,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=PAD,
      ).cpu()

  t = timed(
    {"catts_jax": lambda: sampler(batch, scfg, jax.random.key(0)).tokens, "transformers": theirs},
    settings.repeats,
  )
  flops, floor = roofline.generation_cost(cfg, rows, p, new, dbytes, ceiling, bandwidth)
  decode_bytes = (new - 1) * roofline.weight_bytes(cfg, dbytes)
  return case_report(
    "generation",
    cfg.dtype,
    rows,
    rows * new,
    t,
    floor,
    flops,
    ceiling,
    bandwidth,
    decode_weight_bytes=decode_bytes,
    grow_cache=scfg.grow_cache,
  )


def case_report(kind, dtype, rows, tokens, t, floor, flops, ceiling, bandwidth, **extra) -> dict:
  """One row of report["runs"]: both sides' tokens/s, speedup and roofline fractions."""
  ours, theirs = t["median_s"]["catts_jax"], t["median_s"]["transformers"]
  out = {
    "kind": kind,
    "dtype": dtype,
    "batch": rows,
    **extra,
    "tokens": tokens,
    "catts_jax_tokens_per_s": tokens / ours,
    "transformers_tokens_per_s": tokens / theirs,
    "speedup": theirs / ours,
    "floor_s": floor,
    "catts_jax_roofline_fraction": floor / ours,
    "transformers_roofline_fraction": floor / theirs,
    "catts_jax_gflops": flops / ours / 1e9,
    "catts_jax_mfu": flops / ours / ceiling,  # of the matmul ceiling measured on the spot
    "median_s": t["median_s"],
    "first_call_s": t["first_call_s"],
  }
  if "decode_weight_bytes" in extra:
    out["catts_jax_weight_read_gbs"] = extra["decode_weight_bytes"] / ours / 1e9
    out["catts_jax_bandwidth_fraction"] = extra["decode_weight_bytes"] / ours / bandwidth
  return out


def table(report: dict) -> str:
  """The console summary of a report: the machine, then one line per case."""
  m = report["machine"]
  lines = [
    f"device {report['device']}  params {report['params'] / 1e6:.1f}M  matmul jax {m['jax_matmul_gflops_fp32']:.0f} / "
    f"torch {m['torch_matmul_gflops_fp32']:.0f} GFLOP/s  read {m['read_bandwidth_gbs']:.1f} GB/s",
    f"{'case':28s} {'catts_jax tok/s':>15s} {'transformers':>13s} {'speedup':>8s} {'roofline ours':>13s} {'theirs':>7s} {'compile s':>9s}",
  ]
  for r in report["runs"]:
    name = f"{r['kind']} {r['dtype']} b={r['batch']}" + (" +image" if r.get("image") else "")
    lines.append(
      f"{name:28s} {r['catts_jax_tokens_per_s']:15.0f} {r['transformers_tokens_per_s']:13.0f} {r['speedup']:7.2f}x "
      f"{r['catts_jax_roofline_fraction']:12.0%} {r['transformers_roofline_fraction']:7.0%} "
      f"{r['first_call_s']['catts_jax'] - r['median_s']['catts_jax']:9.1f}"
    )
  return "\n".join(lines)


def markdown(report: dict) -> str:
  """A report as the machine's line and a Markdown table of its cases."""
  m = report["machine"]
  lines = [
    f"{report['device']}: matmul ceiling jax {m['jax_matmul_gflops_fp32']:.0f} / torch "
    f"{m['torch_matmul_gflops_fp32']:.0f} GFLOP/s fp32"
    + (f", jax {m['jax_matmul_gflops_bf16']:.0f} bf16" if "jax_matmul_gflops_bf16" in m else "")
    + f", read bandwidth {m['read_bandwidth_gbs']:.0f} GB/s; {report['params'] / 1e6:.1f}M params.",
    "",
    "| case | dtype | batch | catts_jax tok/s | transformers tok/s | speedup | roofline catts_jax | roofline transformers |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in report["runs"]:
    case = r["kind"] + (" + image" if r.get("image") else "")
    lines.append(
      f"| {case} | {r['dtype']} | {r['batch']} | {r['catts_jax_tokens_per_s']:,.0f} | "
      f"{r['transformers_tokens_per_s']:,.0f} | {r['speedup']:.2f}x | {r['catts_jax_roofline_fraction']:.0%} | "
      f"{r['transformers_roofline_fraction']:.0%} |"
    )
  return "\n".join(lines)


def render_readme(readme: pathlib.Path, reports: list[pathlib.Path]) -> None:
  """Replace the block between the bench-table markers in a Markdown file with tables made
  from the given report.json files."""
  tables = "\n\n".join(f"`{p}`\n\n" + markdown(json.loads(p.read_text())) for p in reports)
  runs.replace_block(readme, "bench-table", tables)
