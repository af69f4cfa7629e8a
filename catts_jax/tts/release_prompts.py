"""The official release's Expert and re-answer prompts, word for word (`prompts="release"`).

The release (alibaba/CA-TTS, main/ca_tts/core/prompts.py and run_benchmark.py) sends each role
one user turn with the image, no system message. Our own prompts (`prompts="ours"`) live beside
each role (voter.py, critic.py, planner.py, reflection.py); docs/fidelity.md compares the two.
Our readers accept both reply forms: the Voter's bare probability list in candidate order, the
Critic's `Critique: Based on this question, your answer is "...", ...` line, the Planner's
`{"module_order": [...]}`.
"""

from __future__ import annotations

PROMPT_STYLES = ("ours", "release")

# The Voter: candidates as a Python list; the question follows in its own text part.
VOTER = """Look at the image carefully, and you will be given a list of candidate options: {options_list}.

Generate a normalized confidence (probability) score for each option in this list.
The order of the output probabilities must strictly correspond to the order of the options in options_list.
The sum of all probabilities must equal 1.

Your output must strictly follow the format below, and must **only** be this array. Do not include any other text, labels, or explanations:
[p_1, p_2, ..., p_n]"""
VOTER_QUESTION = "User question: {question}"

# The Critic sees the voted answer, not a response.
CRITIC = """Given the following information:
Question: {question}
Model Answer: {model_answer}

Please generate a self-reflection critique according to the given image and information above. Your output must strictly follow the format below, without any other text or explanation:

Critique: Based on this question, your answer is "{model_answer}", <Please fill in your concise, objective critique of this answer here, for example, questioning its accuracy, relevance, or completeness>"""

PLANNER = """You are an Expert Planner for the CA-TTS multi-module reasoning system.

Given an image and question, decide the optimal execution order for three modules:
- self_consistency: Multiple sampling with confidence-weighted voting
- self_reflection: Expert critique to refine low-confidence answers
- self_check: Visual contrastive decoding between original and noised images

Analyze the question complexity and visual requirements.
Output ONLY a JSON object with this exact format:
{{"module_order": ["self_consistency", "self_reflection", "self_check"], "reasoning": "brief explanation"}}

Question: {question}"""

# The re-answer: one new user turn (the problem's prompt, then the analysis), greedy.
REANSWER = """{prompt}

--- Previous Analysis ---
According to the previous question '{question}'A previous attempt resulted in the answer '{answer}'.
Here is a critique of that attempt: {critique}

--- New Task ---
Based on the original question and this critique, please re-evaluate and provide the final, correct answer. Put your final answer in one '\\boxed{{}}'."""


def check_style(style: str) -> str:
  if style not in PROMPT_STYLES:
    raise ValueError(f"--config.prompts={style!r}: expected one of {', '.join(PROMPT_STYLES)}")
  return style
