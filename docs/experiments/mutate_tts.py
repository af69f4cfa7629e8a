"""Mutation run over catts_jax/tts: each mutant applied alone, the tts tests run, the file restored.

python docs/experiments/mutate_tts.py OUT.json   # from the repository root, .venv built
"""

import sys

import mutation  # docs/experiments/mutation.py, the shared harness

MUTANTS = [
  (
    "methods.py",
    "  if len(candidates) == 1:\n    return {candidates[0]: 1.0}",
    "  if len(candidates) == -1:\n    return {candidates[0]: 1.0}",
    "lone Voter candidate still called",
  ),
  (
    "voting.py",
    "  return _split(table, source, probs or {}, total)",
    "  return _split(table, source, probs or {}, -total)",
    "voter boost sign flipped",
  ),
  (
    "voting.py",
    "  table.add(source, answer, total)\n  return total",
    "  return total",
    "reflection boost dropped",
  ),
  (
    "voting.py",
    "  return _split(table, source, dict(zip(answers, d.tolist())), total, floor=1.0)",
    "  return _split(table, source, dict(zip(answers, d.tolist())), total, floor=0.0)",
    "self-check split floor dropped",
  ),
  (
    "voting.py",
    "  return table.margin() < margin_threshold\n",
    "  return table.margin() <= margin_threshold\n",
    "self-check gate off by one (<=)",
  ),
  (
    "voting.py",
    "  return reflection_signal(table, signal, answers, confidences) < threshold",
    "  return reflection_signal(table, signal, answers, confidences) > threshold",
    "reflection gate inverted",
  ),
  (
    "voting.py",
    "  return float(math.floor(total + 1e-9)) if voter and tts.voter_round else total",
    "  return float(math.ceil(total - 1e-9)) if voter and tts.voter_round else total",
    "boost rounding up instead of down",
  ),
  (
    "voting.py",
    '  every = not voter or tts.voter_count == "all"',
    "  every = True",
    "answered-only count dropped",
  ),
  (
    "voting.py",
    '  unit = float(sum(counted)) if tts.boost_unit == "mean_weight" else float(len(counted))',
    "  unit = float(len(counted))",
    "mean-weight unit dropped",
  ),
  (
    "voting.py",
    "    return p[0] - (p[1] if len(p) > 1 else 0.0)",
    "    return p[0] - (p[1] if len(p) > 1 else 1.0)",
    "margin of a single answer wrong",
  ),
  (
    "voting.py",
    "  o, z = np.asarray(conf_orig, np.float64), np.asarray(conf_noisy, np.float64)",
    "  z, o = np.asarray(conf_orig, np.float64), np.asarray(conf_noisy, np.float64)",
    "self-check images swapped (drop sign)",
  ),
  (
    "methods.py",
    "  added = voting.voter_boost(table, probs, ctx.boost(ctx.tts.tau, voter=True))",
    "  added = voting.voter_boost(table, probs, 2 * ctx.boost(ctx.tts.tau, voter=True))",
    "voter boost doubled",
  ),
  (
    "methods.py",
    '  summary = "" if paper else candidate_summary(ctx.answers(), ctx.confidences())',
    "  summary = candidate_summary(ctx.answers(), ctx.confidences())",
    "paper planner sees the samples",
  ),
  (
    "methods.py",
    "  if table.winner() is None and SELF_CONSISTENCY not in order:",
    "  if table.winner() is None and SELF_CONSISTENCY in order:",
    "no-answer SC fallback inverted",
  ),
  (
    "selfcheck.py",
    '    added = ctx.boost(tts.selfcheck_weight)\n    table.add("selfcheck_vcd", ctx.vcd.answer, added)',
    '    added = ctx.boost(tts.selfcheck_weight)\n    table.add("selfcheck_vcd", ctx.vcd.answer, -added)',
    "contrastive boost sign flipped",
  ),
  (
    "selfcheck.py",
    "    for condition in (problem.images, noisy):",
    "    for condition in (problem.images, problem.images):",
    "self-check scores the clean image twice",
  ),
  (
    "selfcheck.py",
    '  if mode in ("drop", "both") and candidates:',
    '  if mode in ("drop",) and candidates:',
    "both mode skips the drops",
  ),
  ("planner.py", "      order = order + missing", "      order = order", "paper planner not completed"),
  (
    "context.py",
    "    return voting.boost_total(fraction, self.answers(), self.confidences(), self.tts, voter=voter)",
    "    return voting.boost_total(fraction, self.answers()[:-1], self.confidences()[:-1], self.tts, voter=voter)",
    "boost N off by one",
  ),
  # The release's settings (configs/catts.py:release).
  (
    "reflection.py",
    "  if tts.gated and not signal < tts.reflection_threshold:",
    "  if not signal < tts.reflection_threshold:",
    "ungated reflection still gated",
  ),
  (
    "selfcheck.py",
    "  if tts.gated and not voting.needs_selfcheck(table, tts.selfcheck_margin):",
    "  if not voting.needs_selfcheck(table, tts.selfcheck_margin):",
    "ungated self-check still gated",
  ),
  (
    "methods.py",
    "ctx.boost(ctx.tts.tau, voter=True))",
    "ctx.boost(ctx.tts.tau))",
    "Voter boost sized as the others",
  ),
  (
    "methods.py",
    '  if ctx.cfg.planner.mode == "off":',
    '  if ctx.cfg.planner.mode == "of":',
    "planner off still calls the Planner",
  ),
  (
    "voter.py",
    "    candidates.sort()  # the release lists sorted(set(answers)); a bare list reply follows it",
    "    pass",
    "release Voter candidates unsorted",
  ),
  (
    "critic.py",
    "release_prompts.CRITIC.format(question=question, model_answer=answer)",
    "release_prompts.CRITIC.format(question=question, model_answer=response)",
    "release Critic shown the response",
  ),
  (
    "reflection.py",
    '  if style == "ours":\n    messages += [',
    "  if True:\n    messages += [",
    "release re-answer keeps the chat turns",
  ),
]
TESTS = [
  "tests/test_tts_voting.py",
  "tests/test_tts_methods.py",
  "tests/test_tts_engine.py",
  "tests/test_tts_runner.py",
  "tests/test_tts_planner.py",
  "tests/test_tts_context.py",
  "tests/test_tts_selfcheck.py",
  "tests/test_tts_presets.py",
]

if __name__ == "__main__":
  mutation.run(MUTANTS, "catts_jax/tts", TESTS, sys.argv[1], first_only=True)
