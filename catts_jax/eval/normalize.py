"""Answer normalisation: LaTeX clean-up, safe numeric evaluation, tolerant comparison.

The official Math-Vision grader evaluates answers with `eval(latex2sympy(...))`; we evaluate the
same small language ourselves (numbers, + - * / ^, \\frac, \\sqrt, \\pi, \\cdot, \\times, implicit
products like 2\\sqrt{3}) with a bounded recursive-descent parser on floats. Nothing here
raises on any input string: unparseable text gives None.
"""

from __future__ import annotations

import math
import re

MAX_EXPR_CHARS = 200
MAX_DEPTH = 40
_WRAPPERS = ("text", "mathrm", "textbf", "textit", "mathbf", "mbox", "operatorname", "boldsymbol", "mathit")
_WRAPPER = re.compile(r"\\(?:" + "|".join(_WRAPPERS) + r")\s*\{")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad\b|\\left\b|\\right\b|\\displaystyle\b")
_DEGREE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ\b|\\circ\b|°|\\degree\b")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_UNIT_TAIL = re.compile(r"(?<=[\d)π.])\s*[A-Za-z][A-Za-z ]{0,30}(?:\^\s*[({]?\d[)}]?)?\s*$")


def _unwrap(s: str, pattern: re.Pattern) -> str:
  """Replace `\\cmd{X}` by X for balanced braces (unbalanced: drop the command only)."""
  for _ in range(100):
    m = pattern.search(s)
    if not m:
      return s
    depth, end = 1, None
    for i in range(m.end(), len(s)):
      depth += {"{": 1, "}": -1}.get(s[i], 0)
      if depth == 0:
        end = i
        break
    s = s[: m.start()] + s[m.end() :] if end is None else s[: m.start()] + s[m.end() : end] + s[end + 1 :]
  return s


def strip_latex(s: str) -> str:
  """Presentation removed, content kept: $..$, \\text{}, spacing, degrees, percent, markdown."""
  s = str(s)
  s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
  s = s.replace("\\[", "").replace("\\]", "").replace("**", "").replace("\\\\", " ")
  s = _unwrap(s, _WRAPPER)
  s = _SPACING.sub(" ", s)
  s = _DEGREE.sub("", s)
  s = s.replace("\\%", "").replace("%", "").replace("~", " ")
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  s = re.sub(r"\^\s*\{\s*(\w)\s*\}", r"^\1", s)
  s = re.sub(r"\s+", " ", s).strip(" :;,")
  return s.rstrip(" .。")


def norm_text(s: str) -> str:
  """Case- and space-insensitive form for exact text comparison."""
  return re.sub(r"\s+", "", strip_latex(s)).lower()


# ---- numeric evaluation ---------------------------------------------------------------------


def _group(s: str, i: int) -> tuple[str | None, int]:
  """The argument at s[i]: a balanced {...} group or one character."""
  while i < len(s) and s[i] == " ":
    i += 1
  if i >= len(s):
    return None, i
  if s[i] != "{":
    return s[i], i + 1
  depth = 0
  for j in range(i, len(s)):
    depth += {"{": 1, "}": -1}.get(s[j], 0)
    if depth == 0:
      return s[i + 1 : j], j + 1
  return None, i


def _fracs(s: str) -> str | None:
  """\\frac{a}{b} -> ((a)/(b)), nested ones included; None if an argument is missing."""
  out, i = [], 0
  while i < len(s):
    if s.startswith("\\frac", i):
      a, i = _group(s, i + 5)
      b, i = _group(s, i) if a is not None else (None, i)
      if a is None or b is None:
        return None
      a, b = _fracs(a), _fracs(b)
      if a is None or b is None:
        return None
      out.append(f"(({a})/({b}))")
    else:
      out.append(s[i])
      i += 1
  return "".join(out)


def _latex_to_expr(s: str) -> str:
  s = s.replace("\\pi", "π").replace("\\cdot", "*").replace("\\times", "*")
  s = s.replace("\\sqrt", "√").replace("\\div", "/")
  s = s.replace("−", "-").replace("×", "*").replace("÷", "/")
  s = re.sub(r"√\s*\[([^\]]{1,20})\]\s*\{", r"(\1)‡{", s)  # \sqrt[n]{x} -> (n)‡(x), the n-th root
  s = re.sub(r"\bpi\b", "π", s)
  s = _fracs(s)
  if s is None:
    return ""
  return s.replace("{", "(").replace("}", ")")


class _Parser:
  """Floats only; implicit multiplication before π, √ and "("; n-th roots as `(n)‡(x)`."""

  TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|π|√|‡|\*\*|[-+*/^()])")

  def __init__(self, text: str):
    self.tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
      m = self.TOKEN.match(text, pos)
      if not m:
        raise ValueError("bad token")
      tok = m.group(1)
      self.tokens.append("^" if tok == "**" else tok)
      pos = m.end()
      while pos < len(text) and text[pos].isspace():
        pos += 1
    self.i = 0
    self.depth = 0

  def peek(self) -> str | None:
    return self.tokens[self.i] if self.i < len(self.tokens) else None

  def take(self) -> str:
    tok = self.peek()
    if tok is None:
      raise ValueError("unexpected end")
    self.i += 1
    return tok

  def parse(self) -> float:
    value = self.expr()
    if self.peek() is not None:
      raise ValueError("trailing tokens")
    return value

  def expr(self) -> float:
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise ValueError("too deep")
    value = self.term()
    while self.peek() in ("+", "-"):
      op = self.take()
      rhs = self.term()
      value = value + rhs if op == "+" else value - rhs
    self.depth -= 1
    return value

  def term(self) -> float:
    value = self.unary()
    while True:
      tok = self.peek()
      if tok in ("*", "/"):
        self.take()
        rhs = self.unary()
        value = value * rhs if tok == "*" else value / rhs
      elif tok in ("π", "(", "√"):
        value = value * self.power()  # implicit product: 2π, 3√2, 2(1+x)
      else:
        return value

  def unary(self) -> float:
    if self.peek() in ("+", "-"):
      sign = -1.0 if self.take() == "-" else 1.0
      return sign * self.unary()
    return self.power()

  def power(self) -> float:
    base = self.atom()
    if self.peek() == "^":
      self.take()
      exponent = self.unary()
      if abs(exponent) > 1000:
        raise ValueError("exponent too large")
      return math.pow(base, exponent)
    return base

  def atom(self) -> float:
    tok = self.take()
    if tok == "π":
      return math.pi
    if tok == "√":
      return math.sqrt(self.atom())
    if tok == "(":
      value = self.expr()
      if self.take() != ")":
        raise ValueError("unbalanced")
      if self.peek() == "‡":  # (n)‡(x): n-th root
        self.take()
        return math.pow(self.atom(), 1.0 / value)
      return value
    if tok[0].isdigit() or tok[0] == ".":
      return float(tok)
    raise ValueError(f"unexpected {tok}")


def _evaluate(expr: str) -> float | None:
  if not expr or len(expr) > MAX_EXPR_CHARS:
    return None
  try:
    value = _Parser(expr).parse()
  except (ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
    return None
  return value if isinstance(value, float) and math.isfinite(value) else None


def to_number(s: str, strip_units: bool = True) -> float | None:
  """The value of a numeric answer ("12", "1,000", "12.0 cm", "\\frac{1}{2}", "2\\sqrt{3}",
  "x = 5", "45^\\circ", "50\\%"), else None."""
  s = strip_latex(s)
  if not s or len(s) > MAX_EXPR_CHARS:
    return None
  for sep in ("\\approx", "≈", "="):
    if sep in s:
      s = s.split(sep)[-1].strip()
  if _THOUSANDS.match(s):
    s = s.replace(",", "")
  s = _latex_to_expr(s)
  value = _evaluate(s)
  if value is None and strip_units:
    stripped = _UNIT_TAIL.sub("", s)
    if stripped != s and "\\" not in stripped:
      value = _evaluate(stripped.strip())
  return value


def numbers(text: str) -> list[str]:
  """Plain numbers in reading order ("1,000" kept whole)."""
  out = []
  for m in re.finditer(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|" + _NUMBER.pattern, text):
    out.append(m.group(0))
  return out


def format_number(x: float) -> str:
  """Canonical text of a number: integers without a decimal point, else up to 10 digits."""
  if abs(x) < 1e15 and x == int(x):
    return str(int(x))
  return f"{x:.10g}"


def numbers_equal(a: float, b: float, decimals: int | None = 2) -> bool:
  """Equal after rounding to `decimals` places (the Math-Vision and MMMU rule); None: exact
  up to float noise."""
  if decimals is None:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
  return round(a, decimals) == round(b, decimals) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def split_tuple(s: str) -> list[str] | None:
  """["3", "-4"] from "(3,-4)" or "[3, -4]" (top-level commas); None if not a tuple/list."""
  s = strip_latex(s)
  if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
    return None
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(s[1:-1], 1):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
      if depth < 0:
        return None
    elif ch == "," and depth == 0:
      parts.append(s[start:i].strip())
      start = i + 1
  parts.append(s[start:-1].strip())
  return parts if len(parts) >= 2 and depth == 0 else None


def values_equal(pred: str, gold: str, decimals: int | None = 2) -> bool:
  """Same text, same number, or same tuple element by element."""
  if len(pred) > 20 * len(gold) + 1000:  # a whole long response is never one short value
    return False
  if not norm_text(pred) or not norm_text(gold):
    return False
  if norm_text(pred) == norm_text(gold):
    return True
  g = to_number(gold)
  if g is not None:
    p = to_number(pred)
    return p is not None and numbers_equal(p, g, decimals)
  gt, pt = split_tuple(gold), split_tuple(pred)
  if gt is not None and pt is not None and len(gt) == len(pt):
    return all(values_equal(p, g, decimals) for p, g in zip(pt, gt))
  return False
