"""Mutation run over the Expert's training rows and evaluation (catts_jax/rl/expert_*.py): each
mutant applied alone, tests/test_train_expert.py run (every test, so the report names all that
catch it), the file restored.

python docs/experiments/mutate_expert.py OUT.json   # from the repository root, .venv built
"""

import sys

import mutation  # docs/experiments/mutation.py, the shared harness

MUTANTS = [
  (
    "expert_data.py",
    "      if (order == np.arange(len(cands))).all():",
    "      if False:",
    "reordered Voter row may keep vote-table order",
  ),
  (
    "expert_data.py",
    "      elif len(wrong) < critic_wrong:",
    "      elif len(wrong) < 1:",
    "one wrong response per problem for the Critic",
  ),
  (
    "expert_data.py",
    "  votes[answer] = VOTER_MASS",
    '  votes["A1"] = VOTER_MASS',
    "Voter mass on the first label, not on its answer",
  ),
  (
    "expert_data.py",
    "  votes[answer] = VOTER_MASS",
    "  votes = {answer: VOTER_MASS, **votes}",
    "Voter's own answer named before the labels (a floor overwrites it)",
  ),
  (
    "expert_data.py",
    "  return f\"{reasoning(example)} The answer is {example['answer']}.\"",
    "  return reasoning(example)",
    "Voter reasoning without its answer",
  ),
  (
    "expert_data.py",
    "  cands = tuple(dict.fromkeys(a for a in answers if a))",
    "  cands = tuple(sorted(set(a for a in answers if a)))",
    "candidates sorted, not in vote-table order",
  ),
  (
    "expert_data.py",
    '  return question, [images[c["index"]] for c in content if c["type"] == "image"]',
    "  return question, []",
    "image dropped from the role requests",
  ),
  (
    "expert_data.py",
    "  question = data.prompt_for(example, template)",
    '  question = data.prompt_for(example, "boxed")',
    "question in another template than CA-TTS's",
  ),
  (
    "expert_data.py",
    "    return plan_ask(question, images, order_all=True)",
    "    return plan_ask(question, images)",
    "adaptive Planner prompt instead of the paper's",
  ),
  (
    "expert_data.py",
    '  return json.dumps({"order": list(PLANNER_ORDERS[example["category"]])})',
    '  return json.dumps({"order": list(MODULES)})',
    "one Planner order for every task",
  ),
  (
    "expert_data.py",
    '  return f"{ref} {where}; the answer is {truth}{instead}."',
    '  return f"{ref} {where}; the answer is {answer}{instead}."',
    "Critic names the response's answer",
  ),
  (
    "expert_data.py",
    "  if correct:\n",
    "  if not correct:\n",
    "Critic verdict inverted",
  ),
  (
    "expert_data.py",
    '    if s and s not in have and not s.startswith("The answer is"):',
    '    if s and not s.startswith("The answer is"):',
    "Critic quotes the first sentence, wrong or not",
  ),
  (
    "expert_sft.py",
    "  todo = [i for i in range(len(examples)) if i not in have]",
    "  todo = list(range(len(examples)))",
    "samples drawn again on resume",
  ),
  (
    "expert_sft.py",
    '        list(prompts), list(images), seeds=[stable_seed(seed, examples[i]["id"]) for i in chunk],',
    "        list(prompts), list(images), seeds=[stable_seed(seed, start + b) for b in range(len(chunk))],",
    "sample seeds by batch position",
  ),
  (
    "expert_sft.py",
    "    first = consumed(cycle, batches, step, kind)",
    "    first = step * count",
    "data position ignores the cycle",
  ),
  (
    "expert_eval.py",
    "  return max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None",
    "  return max(counts, key=lambda a: (counts[a], answers.index(a))) if counts else None",
    "majority ties to the last answer",
  ),
  (
    "expert_eval.py",
    '      best = max(row["candidates"], key=lambda c: value[c])  # ties: the first listed',
    '      best = min(row["candidates"], key=lambda c: value[c])',
    "Voter choice is its least probable candidate",
  ),
]


if __name__ == "__main__":
  mutation.run(MUTANTS, "catts_jax/rl", ["tests/test_train_expert.py"], sys.argv[1])
