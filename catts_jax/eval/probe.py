"""The perception-confidence probe: accuracy and confidence as an image is degraded.

For each perturbation kind and strength the policy answers every problem greedily; each
answer is graded and carries two confidences from the same decoding pass: `exp(-NMLP)` and
DeepConf's mean top-k confidence. Strength 0 is run once and shared by all kinds. Rows stream
to `results.jsonl`; a rerun with the same output directory skips finished (id, kind, level)
rows. A problem that fails (unreadable image, over-long prompt) is recorded with its error
and the run goes on.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from catts_jax import perturb, runs
from catts_jax.eval import answers, metrics, report
from catts_jax.policy import Policy
from catts_jax.sampling import SamplingConfig


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  kinds: tuple[str, ...] = ("noise", "occlusion", "mosaic", "viewpoint", "blur")
  levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  targeted: bool = False  # perturb only the CLIP key regions
  regions: int = 4  # key regions (patches) per image when targeted
  max_new_tokens: int = 512
  batch_size: int = 8
  seed: int = 0
  template: str | None = None  # prompt template (data.prompt_for); None = the benchmark's


def conditions(cfg: ProbeConfig) -> list[tuple[str, float]]:
  """(kind, level) pairs to run; level 0 once, as kind "none"."""
  out = [("none", 0.0)] if 0.0 in cfg.levels else []
  return out + [(k, lv) for k in cfg.kinds for lv in cfg.levels if lv > 0]


class Probe:
  def __init__(
    self, policy: Policy, examples: Sequence[dict], benchmark: str, cfg: ProbeConfig, saliency=None
  ):
    if cfg.targeted and saliency is None:
      raise ValueError("a targeted probe needs a CLIP saliency model")
    self.policy, self.examples, self.benchmark, self.cfg, self.saliency = (
      policy,
      examples,
      benchmark,
      cfg,
      saliency,
    )
    self.sampling = SamplingConfig(
      max_new_tokens=cfg.max_new_tokens,
      temperature=0.0,
      stop_ids=policy.stop_ids(),
      confidence=policy.confidence,
    )
    self._masks: dict[str, list] = {}

  # --- one problem -------------------------------------------------------------------------

  def prepared(self, index: int, kind: str, level: float) -> tuple[str, list]:
    """Prompt text and (perturbed) images of problem `index`; raises with the problem id."""
    example = self.examples[index]
    prompt, images = self.policy.example_prompt(example, self.cfg.template)
    if kind != "none":
      masks = self.region_masks(example, images) if self.cfg.targeted else [None] * len(images)
      seed = self.cfg.seed + 1009 * index
      images = [
        perturb.perturb(im, kind, level, seed=seed + j, regions=m)
        for j, (im, m) in enumerate(zip(images, masks))
      ]
    return prompt, images

  def region_masks(self, example: dict, images: list) -> list:
    if example["id"] not in self._masks:
      self._masks[example["id"]] = [
        self.saliency.region_mask(im, self.cfg.regions, example["question"]) for im in images
      ]
    return self._masks[example["id"]]

  # --- batches -------------------------------------------------------------------------------

  def answer(self, items: list[tuple[int, str, list]]) -> list[dict[str, Any]]:
    """Greedy answers for (index, prompt, images) items; a batch that fails is retried one
    item at a time so the error lands on the item that caused it."""
    try:
      out = self.policy.sample([p for _, p, _ in items], [im for _, _, im in items], config=self.sampling)
    except ValueError as e:
      if len(items) == 1:
        return [{"error": str(e)}]
      return [row for item in items for row in self.answer([item])]
    rows = []
    for b, (index, _, _) in enumerate(items):
      response = out.texts[b][0]
      correct, extracted = answers.grade(self.benchmark, response, self.examples[index])
      rows.append(
        {
          "response": response,
          "extracted": extracted,
          "correct": bool(correct),
          "confidence": float(out.scores["confidence"][b, 0]),
          "topk_confidence": float(out.scores["conf_mean"][b, 0]),
          "tokens": int(out.lengths[b, 0]),
        }
      )
    return rows

  def run(self, out_dir: pathlib.Path, progress=None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.jsonl"
    done = {(r["id"], r["kind"], r["level"]) for r in runs.read_rows(results)}
    with runs.appending(results) as write:
      for kind, level in conditions(self.cfg):
        pending = [i for i, ex in enumerate(self.examples) if (ex["id"], kind, level) not in done]
        for start in range(0, len(pending), self.cfg.batch_size):
          chunk, items, rows = pending[start : start + self.cfg.batch_size], [], {}
          for i in chunk:
            try:
              items.append((i, *self.prepared(i, kind, level)))
            except (ValueError, OSError) as e:
              rows[i] = {"error": str(e)}
          if items:
            rows.update(zip([i for i, _, _ in items], self.answer(items)))
          for i in chunk:
            write({"id": self.examples[i]["id"], "kind": kind, "level": level, **rows[i]})
          if progress:
            progress(len(chunk))
    return summarize(runs.read_rows(results), self.cfg, out_dir)


def summarize(rows: list[dict[str, Any]], cfg: ProbeConfig, out_dir: pathlib.Path) -> dict[str, Any]:
  """Per (kind, level): accuracy, mean confidences, ECE, AUROC and the confidence drop
  against level 0 on the same problems; one PNG per kind."""
  by_condition: dict[tuple[str, float], dict[str, dict]] = {}
  for r in rows:
    by_condition.setdefault((r["kind"], r["level"]), {})[r["id"]] = r
  base = by_condition.get(("none", 0.0), {})
  table, curves = [], {}
  for kind in cfg.kinds:
    curve = {"accuracy": [], "confidence": [], "topk_confidence": []}
    for level in cfg.levels:
      cond = base if level == 0 else by_condition.get((kind, level), {})
      ok = [r for r in cond.values() if "error" not in r]
      entry = {"kind": kind, "level": level, "problems": len(cond), "errors": len(cond) - len(ok)}
      if ok:
        conf = np.array([r["confidence"] for r in ok])
        topk = np.array([r["topk_confidence"] for r in ok])
        correct = np.array([r["correct"] for r in ok], float)
        paired = [r["id"] for r in ok if r["id"] in base and "error" not in base[r["id"]]]
        drop = (
          metrics.confidence_drop(
            [base[i]["confidence"] for i in paired], [cond[i]["confidence"] for i in paired]
          )
          if paired
          else {}
        )
        entry.update(
          accuracy=float(correct.mean()),
          confidence=float(conf.mean()),
          topk_confidence=float(topk.mean()),
          ece=metrics.ece(conf, correct),
          auroc=metrics.auroc(conf, correct),
          confidence_drop=drop.get("drop"),
          confidence_drop_ratio=drop.get("relative_drop"),
        )
      table.append(entry)
      curve["accuracy"].append(entry.get("accuracy", float("nan")))
      curve["confidence"].append(entry.get("confidence", float("nan")))
      curve["topk_confidence"].append(entry.get("topk_confidence", float("nan")))
    curves[kind] = curve
    report.plot_perturbation(
      list(cfg.levels),
      {"policy": {"accuracy": curve["accuracy"], "confidence": curve["confidence"]}},
      out_dir / f"probe_{kind}.png",
      title=f"{kind}{' (targeted)' if cfg.targeted else ''}: accuracy and confidence",
    )
  return {"config": dataclasses.asdict(cfg), "conditions": table, "curves": curves}
