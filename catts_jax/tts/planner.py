"""The Expert as Planner: which CA-TTS modules to run on a problem, and in what order.

  order, call = plan(expert, question, images)   # the paper's: all three modules, ordered
  order, call = plan(expert, question, images, candidate_summary(answers, confidences))
  order  # e.g. ["self_consistency", "visual_self_check"]; DEFAULT_ORDER when unparseable

Two planners (`planner.mode` in configs/catts.py): the paper's (and the release's) sees image +
question only, so it plans once per problem before any sampling, and orders all three modules
(a reply that names fewer is completed in DEFAULT_ORDER, noted in `call.reason`); the adaptive
one (ours) also sees a summary of the sampled answers, plans again at each N and may skip
modules.

The reply is read leniently (code fences, prose around the JSON, single quotes, bare words,
aliases such as "SC" / "SR" / "SCk" / "self-check", an arrow list "SC -> SR"); duplicates
are dropped and so are unknown names. A reply with no usable module falls back to
DEFAULT_ORDER (the paper's SC -> SR -> SCk) with `call.fallback` set and `call.reason` saying
why. A failed call raises ExpertError: the caller runs DEFAULT_ORDER without the planner.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from PIL import Image

from catts_jax.tts import release_prompts
from catts_jax.tts.expert import Ask, Expert, ExpertCall, shorten, system_message, user_message
from catts_jax.tts.release_prompts import check_style
from catts_jax.tts.replies import extract_json

SELF_CONSISTENCY = "self_consistency"
SELF_REFLECTION = "self_reflection"
VISUAL_SELF_CHECK = "visual_self_check"
MODULES = (SELF_CONSISTENCY, SELF_REFLECTION, VISUAL_SELF_CHECK)
DEFAULT_ORDER = MODULES

# Names as the normalised key (lower case, no separators) -> module.
ALIASES = {
  **dict.fromkeys(
    ("sc", "selfconsistency", "consistency", "vote", "voting", "majorityvote"), SELF_CONSISTENCY
  ),
  **dict.fromkeys(("sr", "selfreflection", "reflection", "reflect", "critic", "critique"), SELF_REFLECTION),
  **dict.fromkeys(
    (
      "sck",
      "vsc",
      "selfcheck",
      "visualselfcheck",
      "visualcheck",
      "selfchecking",
      "visualselfchecking",
      "vcd",
    ),
    VISUAL_SELF_CHECK,
  ),
}

PLANNER_SYSTEM = "You are a careful expert who plans how to verify answers to questions about images."
PLANNER_PROMPT = """Modules that can check a model's answer:
- self_consistency: weigh many sampled answers by the model's confidence, with an expert vote.
- self_reflection: an expert critiques a low-confidence answer and the model answers again.
- visual_self_check: test whether the answer still holds when the image is degraded.

Question:
{question}
{summary}
{instruction}
Reply with JSON only, e.g. {{"order": ["self_consistency", "self_reflection", "visual_self_check"]}}"""
ORDER_ALL = "Give the order in which to run all three modules on this problem."
CHOOSE = (
  "Choose the modules that will help on this problem and the order to run them; skip any that will not."
)
PLANNER_MODES = ("paper", "adaptive", "off")
_ORDER_KEYS = ("order", "modules", "plan", "sequence", "steps", "pipeline")
_SEPARATORS = re.compile(r"->|=>|\u2192|>|,|;|\band then\b|\bthen\b", re.IGNORECASE)
_LEAD = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s*")
_LINE_LABEL = re.compile(r"^\s*(?:order|plan|modules|sequence)\s*:\s*", re.IGNORECASE)


def module_name(name: object) -> str | None:
  """The module a name stands for ("SC", "Self-Consistency", "2. visual self check"), or None."""
  if isinstance(name, dict):
    name = next((name[k] for k in ("module", "name", "id") if k in name), None)
  if not isinstance(name, str):
    return None
  name = _LEAD.sub("", name)
  name = re.sub(r"\(.*?\)", "", name).strip() or name  # "Self-Consistency (SC)"
  key = re.sub(r"[^a-z]", "", name.lower())
  key = key.removesuffix("module")
  return ALIASES.get(key)


def _names(value: object) -> list | None:
  """The list of names a parsed reply holds, if any."""
  if isinstance(value, dict):
    lower = {str(k).lower(): v for k, v in value.items()}
    found = next((lower[k] for k in _ORDER_KEYS if k in lower), None)
    if found is None:
      lists = [v for v in value.values() if isinstance(v, list)]
      found = lists[0] if len(lists) == 1 else None
    value = found
  if isinstance(value, str):
    value = _SEPARATORS.split(value)
  return value if isinstance(value, list) else None


def _order(names: list) -> tuple[list[str], list[str]]:
  """Known modules in first-mention order, and the names dropped as unknown."""
  order, unknown = [], []
  for name in names:
    module = module_name(name)
    if module is None:
      unknown.append(shorten(str(name), 40))
    elif module not in order:
      order.append(module)
  return order, unknown


def parse_order(text: str) -> tuple[list[str] | None, str | None]:
  """(module order, note) from the planner's reply; (None, why) when it has no usable order."""
  why = "no module order found in the reply"
  for value in extract_json(text):
    names = _names(value)
    if names is None:
      continue
    order, unknown = _order(names)
    if order:
      return order, f"dropped unknown modules: {', '.join(unknown)}" if unknown else None
    why = f"no known module in {unknown}" if unknown else "empty module order"
  # No usable JSON: accept a reply, or else its last such line, that is nothing but module
  # names ("SC -> SR -> SCk", or one per line).
  lines = [ln for ln in text.strip().strip("`").splitlines() if ln.strip()]
  for line in ["\n".join(lines).replace("\n", ","), *reversed(lines)]:
    pieces = [p.strip() for p in _SEPARATORS.split(_LINE_LABEL.sub("", line)) if p.strip()]
    order, unknown = _order(pieces)
    if order and not unknown:
      return order, None
  return None, why


def candidate_summary(
  answers: Sequence[str], confidences: Sequence[float] | None = None, top: int = 5
) -> str:
  """A few lines on the sampled answers for the planner: each distinct answer (most frequent
  first) with its count and mean confidence."""
  if not answers:
    return ""
  stats: dict[str, list[float]] = {}
  for i, answer in enumerate(answers):
    stats.setdefault(str(answer), []).append(
      float(confidences[i]) if confidences is not None else float("nan")
    )
  ranked = sorted(stats.items(), key=lambda kv: -len(kv[1]))
  lines = [f"The model's {len(answers)} sampled answers:"]
  for answer, confs in ranked[:top]:
    line = f"- {shorten(answer, 80)}: {len(confs)} of {len(answers)}"
    if confidences is not None:
      line += f", mean confidence {sum(confs) / len(confs):.2f}"
    lines.append(line)
  if len(ranked) > top:
    lines.append(f"- ... and {len(ranked) - top} other answers")
  return "\n".join(lines)


def plan_ask(
  question: str,
  images: Sequence[Image.Image],
  summary: str = "",
  *,
  max_tokens: int = 256,
  temperature: float = 0.0,
  order_all: bool = False,
  style: str = "ours",
) -> Ask:
  """The Planner's request: the module order for one problem; DEFAULT_ORDER with
  call.fallback=True when the reply has none. `order_all` (the paper's planner): every module
  runs, those the reply leaves out after the rest in DEFAULT_ORDER. `style` "release": the
  release's prompt (image + question, all three modules; no summary)."""
  if check_style(style) == "release":
    order_all = True  # its prompt asks for all three
    messages = [user_message(release_prompts.PLANNER.format(question=question), images)]
  else:
    prompt = PLANNER_PROMPT.format(
      question=question,
      summary=f"\n{summary}\n" if summary else "",
      instruction=ORDER_ALL if order_all else CHOOSE,
    )
    messages = [system_message(PLANNER_SYSTEM), user_message(prompt, images)]

  def read(expert: Expert, text: str, call: ExpertCall) -> tuple[list[str], ExpertCall]:
    order, note = parse_order(text)
    if order is None:
      call = dataclasses.replace(call, fallback=True, reason=note, output=expert.excerpt(text))
      order = list(DEFAULT_ORDER)
    else:
      missing = [m for m in DEFAULT_ORDER if m not in order] if order_all else []
      order = order + missing
      if missing:
        note = "; ".join(filter(None, [note, f"completed with {', '.join(missing)}"]))
      if note:
        call = dataclasses.replace(call, reason=note)
    expert.last_call = call
    return order, call

  return Ask("planner", messages, max_tokens, temperature, read)


def plan(expert: Expert, *args, **kwargs) -> tuple[list[str], ExpertCall]:
  """`plan_ask`'s request, answered by `expert`; ExpertError when it cannot be reached."""
  return expert.ask(plan_ask(*args, **kwargs))
