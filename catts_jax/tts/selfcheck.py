"""Visual Self-Check: does the answer lean on the image? Two checks (`selfcheck.mode`):

- "contrastive" (the paper's module, the default): the problem's VCD decode, drawn from
  `(1 + a) l_orig - a l_noisy` under the plausibility cut `l_orig >= log(b) + max l_orig`
  (`draws.contrastive_logits`, `vcd.alpha` / `vcd.beta`, one decode per problem), joins the
  vote with `selfcheck_weight * N`: an answer the image supports gains, one the model gives
  whatever it sees does not.
- "drop" (ours): each candidate answer in the table is represented by its most confident
  response; that response is scored teacher-forced (exp(-NMLP)) under the original image and
  under a perturbed copy, all candidates in one batched pass (2 rows each). The support drop
  `max(conf_orig - conf_noisy, 0)` earns each candidate `selfcheck_weight * N * drop` votes,
  scaled down when the drops sum past 1 (`voting.selfcheck_boost`).
- "both": the two, each worth up to `selfcheck_weight * N`.

Gated by `voting.needs_selfcheck` (a contested table) unless `tts.gated` is False.

The drop rule was chosen on 512 synthetic validation problems with an earlier build of the bundled
CDRL checkpoint (`infer.catts --split validation --expert self`, the rules replayed on the
recorded drops).
Accuracy % at N = 1..16 and slope: this rule 56.1, 58.2, 55.9, 60.0, 60.2 (beta 1.00); the
whole `selfcheck_weight * N` split by the drops 56.2, 56.2, 56.1, 56.8, 57.2 (0.26); no
self-check 56.1, 58.2, 56.8, 59.2, 59.4 (0.76); majority 56.1, 56.1, 56.2, 58.2, 58.6 (0.71).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from catts_jax import perturb
from catts_jax.tts import voting
from catts_jax.tts.context import Context, Problem, Steps
from catts_jax.tts.planner import VISUAL_SELF_CHECK

if TYPE_CHECKING:
  from catts_jax.policy import Policy


def perturbed_images(
  images: Sequence[Image.Image], kind: str, strength: float, seed: int
) -> list[Image.Image]:
  return perturb.perturb_batch(list(images), kind, strength, seed=seed)


def score_pairs(
  policy: Policy, items: Sequence[tuple[Problem, Sequence[Image.Image], Sequence[Sequence[int]]]]
) -> list[tuple[np.ndarray, np.ndarray]]:
  """exp(-NMLP) of each (problem, perturbed images, responses)'s responses (token ids) under
  the problem's images and the perturbed ones, all in one scoring pass: ([K], [K]) each."""
  prompts, responses, images = [], [], []
  for problem, noisy, rows in items:
    for condition in (problem.images, noisy):
      prompts += [problem.prompt] * len(rows)
      responses += list(rows)
      images += [list(condition)] * len(rows)
  conf = np.asarray(policy.score(prompts, responses, images)["confidence"], np.float64)
  out, start = [], 0
  for _, _, rows in items:
    k = len(rows)
    out.append((conf[start : start + k], conf[start + k : start + 2 * k]))
    start += 2 * k
  return out


SELFCHECK_MODES = ("contrastive", "drop", "both")


def visual_self_check(ctx: Context, table: voting.VoteTable) -> Steps:
  """Runs the module on one problem at one N; returns its record for results.jsonl."""
  tts, mode = ctx.tts, ctx.cfg.selfcheck.mode
  margin = table.margin()
  record: dict[str, Any] = {"module": VISUAL_SELF_CHECK, "mode": mode, "margin": margin}
  if tts.gated and not voting.needs_selfcheck(table, tts.selfcheck_margin):
    return {**record, "ran": False, "reason": f"margin {margin:.3f} >= threshold {tts.selfcheck_margin:g}"}
  candidates = list(table.weights())
  if mode in ("drop", "both") and candidates:
    reps = [ctx.representative(a) for a in candidates]
    orig, noisy = yield from ctx.selfcheck_scores(reps)
    drops = voting.selfcheck_support(orig, noisy)
    added = voting.selfcheck_boost(table, candidates, drops, ctx.boost(tts.selfcheck_weight))
    record.update(
      candidates=candidates,
      scored=[r.source for r in reps],
      conf_orig=orig.tolist(),
      conf_noisy=noisy.tolist(),
      drops=drops.tolist(),
      added=added,
    )
  if mode in ("contrastive", "both") and ctx.vcd is not None and voting.answered(ctx.vcd.answer):
    added = ctx.boost(tts.selfcheck_weight)
    table.add("selfcheck_vcd", ctx.vcd.answer, added)
    ctx.pool.append(ctx.vcd)  # a response behind a table answer: Self-Reflection may critique it
    record["contrastive"] = {"answer": ctx.vcd.answer, "added": added}
  if "added" not in record and "contrastive" not in record:
    why = "no candidate answers" if mode == "drop" else "no answer from the contrastive decode"
    return {**record, "ran": False, "reason": why}
  return {**record, "ran": True}
