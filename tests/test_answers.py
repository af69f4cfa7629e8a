"""Answer extraction and grading: tricky cases per benchmark, and a fuzz test that it never raises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catts_jax.eval import answers, normalize, parsing


def ex(benchmark, answer, options=(), answer_type=None, **metadata):
  options = list(options)
  return {
    "id": "x",
    "benchmark": benchmark,
    "answer": answer,
    "options": options,
    "question_type": "multiple_choice" if options else "open",
    "answer_type": answer_type or ("option" if options else "any"),
    "metadata": metadata,
  }


def check(benchmark, example, cases):
  for response, expected in cases:
    correct, extracted = answers.grade(benchmark, response, example)
    assert correct is expected, (response, extracted)


# ---- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "text, value",
  [
    ("12", 12.0), ("12.0", 12.0), ("1,000", 1000.0), ("\\frac{1}{2}", 0.5), ("\\dfrac12", 0.5), ("-2", -2.0),
    ("2\\sqrt{3}", 2 * 3**0.5), ("\\frac{6-\\sqrt{2}}{2}", (6 - 2**0.5) / 2), ("\\sqrt[3]{8}", 2.0),
    ("3\\pi", 3 * 3.141592653589793), ("$6 \\mathrm{~m}$", 6.0), ("45^{\\circ}", 45.0), ("50\\%", 50.0),
    ("x = 5", 5.0), ("12 apples", 12.0), ("1.5e-3", 0.0015), (".5", 0.5),
    ("(3,-4)", None), ("2h 48m", None), ("1 and 4", None), ("9^9^9^9", None), ("1e999999", None),
    ("\\frac{1}", None), ("(" * 300 + "1" + ")" * 300, None), ("9" * 5000, None), ("A", None),
  ],
)  # fmt: skip
def test_to_number(text, value):
  got = normalize.to_number(text)
  assert got == pytest.approx(value) if value is not None else got is None


def test_boxed_and_phrases():
  assert parsing.boxed("a \\boxed{\\frac{1}{2}} b \\boxed{3}") == ["\\frac{1}{2}", "3"]
  assert parsing.boxed("\\boxed{12") == ["12"]
  assert parsing.final_span("So the answer is 4.8. Done.") == ("4.8", "phrase")
  assert parsing.final_span("**Answer:** (C) 140") == ("(C) 140", "phrase")
  assert parsing.final_span("the answer is ... be 4 or 5.") == ("... be 4 or 5", "phrase")
  assert parsing.final_span("no marker here") == ("", "none")


# ---- Math-Vision -------------------------------------------------------------------------------


def test_mathvision_numbers_are_not_substrings():
  check("mathvision", ex("mathvision", "10"), [
    ("The answer is 1.", False), ("\\boxed{10}", True), ("\\boxed{100}", False), ("\\boxed{10.0}", True),
    ("The answer is 10 people.", True), ("\\boxed{1,0}", False),
  ])  # fmt: skip
  check(
    "mathvision",
    ex("mathvision", "1"),
    [("\\boxed{10}", False), ("\\boxed{1}", True), ("\\boxed{-1}", False)],
  )


def test_mathvision_latex_and_numeric_forms():
  check("mathvision", ex("mathvision", "0.5"), [
    ("\\boxed{\\frac{1}{2}}", True), ("\\boxed{\\dfrac{1}{2}}", True), ("The answer is $\\frac12$.", True),
    ("\\boxed{\\frac{1}{3}}", False), ("\\boxed{1/2}", True),
  ])  # fmt: skip
  check("mathvision", ex("mathvision", "(3,-4)"), [("\\boxed{(3, -4)}", True), ("\\boxed{(-4,3)}", False)])
  check("mathvision", ex("mathvision", "45"), [("\\boxed{45^\\circ}", True), ("\\boxed{45°}", True)])
  # Without a box or "answer is": only the official "... is 12." form, never the last number.
  check(
    "mathvision", ex("mathvision", "12"), [("So the total is 12.", True), ("I get 12 and then 13", False)]
  )


def test_mathvision_two_boxed_answers_the_last_counts():
  example = ex("mathvision", "5")
  check(
    "mathvision",
    example,
    [("First \\boxed{3}, no wait: \\boxed{5}", True), ("\\boxed{5} or \\boxed{3}", False)],
  )


def test_mathvision_choices():
  example = ex(
    "mathvision",
    "B",
    ["$\\frac{1}{2}$", "$\\frac{1}{4}$", "$\\frac{1}{8}$", "$\\frac{3}{4}$", "$\\frac{3}{8}$"],
  )
  check("mathvision", example, [
    ("The answer is B.", True), ("\\boxed{B}", True), ("(B)", True), ("\\boxed{\\text{(B)}}", True),
    ("The answer is $\\frac{1}{4}$.", True), ("\\boxed{0.25}", True), ("The answer is (B) $\\frac{1}{4}$", True),
    ("The answer is A.", False), ("\\boxed{\\frac{1}{2}}", False), ("Option B is tempting, but the answer is C.", False),
    ("B\nbecause the quarter is shaded", True), ("Counting the shaded parts gives B.", True),
    ("Bob thinks about it", False),
  ])  # fmt: skip
  _, extracted = answers.grade("mathvision", "the answer is $\\frac{1}{4}$", example)
  assert extracted == "B"


def test_mathvision_letter_named_options_follow_the_official_either_rule():
  example = ex("mathvision", "D", ["A", "B", "C", "E", "Impossible to determine"])
  check("mathvision", example, [("\\boxed{D}", True), ("\\boxed{E}", True), ("\\boxed{C}", False)])
  units = ex(
    "mathvision",
    "E",
    ["$6 \\mathrm{~m}$", "$8 \\mathrm{~m}$", "$10 \\mathrm{~m}$", "$11 \\mathrm{~m}$", "$12 \\mathrm{~m}$"],
  )
  check("mathvision", units, [("\\boxed{12}", True), ("The answer is 12 m.", True), ("\\boxed{1}", False)])


# ---- MathVista ---------------------------------------------------------------------------------


def test_mathvista_choice_mapping():
  example = ex("mathvista", "C", ["135°", "140°", "145°", "150°"])
  check("mathvista", example, [
    ("The answer is (C) 145°", True), ("\\boxed{145°}", True), ("\\boxed{145}", True), ("\\boxed{C}", True),
    ("I think it is 140°.", False), ("The answer is 140.", False), ("no idea", False),
  ])  # fmt: skip
  # An answer that matches nothing is wrong: no nearest-choice guess.
  assert answers.grade("mathvista", "The answer is 146", example) == (False, "146")
  yes_no = ex("mathvista", "B", ["Yes", "No"])
  check("mathvista", yes_no, [("No", True), ("Yes", False), ("The answer is: No.", True)])


def test_mathvista_types_and_precision():
  integer = ex("mathvista", "4", answer_type="integer")
  check("mathvista", integer, [
    ("The answer is 4.0", True), ("There are 4 objects left.", True), ("\\boxed{4.5}", False), ("\\boxed{14}", False),
    ("I count 3, then 4", True),
  ])  # fmt: skip
  flt = ex("mathvista", "1.2", answer_type="float", precision=1)
  check(
    "mathvista",
    flt,
    [("\\boxed{1.24}", True), ("d = 1.2 m", True), ("\\boxed{1.3}", False), ("\\boxed{12}", False)],
  )
  lst = ex("mathvista", "[2, 4, 7]", answer_type="list")
  check(
    "mathvista",
    lst,
    [
      ("\\boxed{[2,4,7]}", True),
      ("The values are [2, 4, 7].", True),
      ("[2, 4]", False),
      ("[2, 4, 8]", False),
    ],
  )


# ---- MMMU --------------------------------------------------------------------------------------


def test_mmmu_multiple_choice_parser():
  example = ex("mmmu", "B", ["barrel-vaulted roofing", "decorative rhythm", "a higher roof", "light and air"])
  check("mmmu", example, [
    ("I believe B is the best description of the work.", True),  # B inside a sentence
    ("Between A and B, I pick B", True),  # the last mention wins (official rule)
    ("(A) is wrong; (B) is right", True), ("The answer is (B).", True), ("\\boxed{B}", True),
    ("The columns give the hall its decorative rhythm, so that is my pick here", True),  # option text
    ("A", False), ("I cannot tell.", False),  # no random letter when nothing is found
    ("Bob and Bill wrote this.", False),
  ])  # fmt: skip


def test_mmmu_option_text_is_matched_as_whole_words():
  example = ex("mmmu", "C", ["1", "10", "100", "1000"])
  check(
    "mmmu",
    example,
    [
      ("Looking at the labels, the largest visible value is 100 here", True),
      ("It is 10 or so, clearly", False),
    ],
  )


def test_mmmu_open_answers():
  example = ex("mmmu", "24.5", accepted_answers=["24.5"])
  check("mmmu", example, [
    ("So the area is 24.50", True), ("The area is 24.5 square units, not 25.", True), ("\\boxed{24.5}", True),
    ("So the area is 245", False), ("The area is 2.45", False), ("The area is 4.5", False),
    ("Therefore the area is 25", False),
  ])  # fmt: skip
  ratio = ex("mmmu", "24/7", accepted_answers=["24/7", "3.429"])
  check(
    "mmmu", ratio, [("\\boxed{3.43}", True), ("\\boxed{\\frac{24}{7}}", True), ("the ratio is 3.5", False)]
  )
  text = ex("mmmu", "Rococo", accepted_answers=["Rococo"])
  check(
    "mmmu",
    text,
    [("The style is Rococo.", True), ("The style is Baroque.", False), ("The style is rococoesque.", False)],
  )


# The MMMU open-answer family: (form, response, reference, our verdict, the official parser's).
# Where they differ, ours is the one a reader would give: the official parser accepts any
# number of a sentence (intermediate quantities, the 2 of "m^2", a number the response rejects),
# splits "3 x 10^8" into 3, 10 and 8, and skips a number followed by a comma ("24.5, not 25").
MMMU_OPEN_FAMILY = [
  ("answer word, unit power", "Therefore, the area is 24.5 cm^2.", "24.5", True, True),
  ("answer word, the unit's power", "So the area is 12 m^2.", "2", False, True),
  ("no answer word, result last", "Multiplying 3.5 by 7 gives 24.5", "24.5", True, True),
  ("no answer word, an intermediate quantity", "Multiplying 3.5 by 7 gives 24.5", "3.5", False, True),
  ("no answer word, unit power first", "A cm^2 area of 12", "12", True, True),
  ("no answer word, the unit's power", "A cm^2 area of 12", "2", False, True),
  (
    "no answer word, several numbers",
    "We get 7 m^2 for each of 3.5 rows: 24.5 m^2 in all",
    "24.5",
    True,
    True,
  ),
  ("thousands separators", "The population is 1,234,567", "1234567", True, True),
  ("scientific notation", "The rate is 1.5e-3 per second", "0.0015", True, True),
  ("times ten to a power", "The speed is 3 × 10^8 m/s", "300000000", True, False),
  ("times ten to a power, LaTeX", "The charge is $1.6 \\times 10^{-19}$ C", "1.6e-19", True, False),
  ("several numbers, the answer first", "The answer is 24.5, not 25 or 24", "24.5", True, False),
  ("several numbers, a rejected one", "The answer is 24.5, not 25 or 24", "25", False, True),
]


@pytest.mark.parametrize(
  "form, response, gold, ours, official", MMMU_OPEN_FAMILY, ids=[f[0] for f in MMMU_OPEN_FAMILY]
)
def test_mmmu_open_answer_family(form, response, gold, ours, official):
  import mmmu_official

  assert answers.grade("mmmu", response, ex("mmmu", gold, accepted_answers=[gold]))[0] is ours
  assert mmmu_official.correct(response, gold) is official


# ---- MMStar ------------------------------------------------------------------------------------


def test_mmstar_letter_matching():
  example = ex("mmstar", "B", ["red", "yellow", "green", "blue"])
  check("mmstar", example, [
    ("Looking closely, B matches the image.", True), ("\\boxed{B}", True), ("The answer is B", True),
    ("B", True), ("(B) yellow", True), ("The rectangle is yellow.", True),
    ("A or B? Hard to say.", False),  # two letters and no marker: ambiguous (VLMEvalKit rule)
    ("The rectangle is red.", False), ("", False),
  ])  # fmt: skip
  count = ex("mmstar", "A", ["1", "10", "2", "12"])
  check(
    "mmstar",
    count,
    [("There is 1 rectangle.", True), ("There are 10 rectangles.", False), ("\\boxed{1}", True)],
  )


def test_extracted_answers_are_canonical():
  example = ex("mmstar", "B", ["red", "yellow", "green", "blue"])
  assert {answers.extract("mmstar", r, example) for r in ("\\boxed{B}", "(B)", "The answer is yellow.")} == {
    "B"
  }
  numeric = ex("mathvision", "12")
  assert {
    answers.extract("mathvision", r, numeric) for r in ("\\boxed{12.0}", "The answer is 12.", "\\boxed{12}")
  } == {"12"}


def test_grade_handles_non_strings_and_unknown_benchmarks():
  example = ex("mathvision", "12")
  assert answers.grade("mathvision", None, example) == (False, "")
  assert answers.grade(None, 12, example)[0] is True  # str(12), the example's own benchmark
  with pytest.raises(ValueError, match="no grader"):
    answers.grade("chartqa", "x", example)


# ---- fuzz --------------------------------------------------------------------------------------

EXAMPLES = [
  ex("mathvision", "B", ["$\\frac{1}{2}$", "2", "C", "(D)", "1 and 4"]),
  ex("mathvision", "(3,-4)"),
  ex("mathvision", "10"),
  ex("mathvista", "A", ["145°", "Yes"]),
  ex("mathvista", "4", answer_type="integer"),
  ex("mathvista", "1.2", answer_type="float", precision=1),
  ex("mathvista", "[2, 4]", answer_type="list"),
  ex("mathvista", "quarter", answer_type="text"),
  ex("mmmu", "C", ["1", "10", "<image 1>"], accepted_answers=["C"]),
  ex("mmmu", "24/7", accepted_answers=["24/7", "3.429"]),
  ex("mmstar", "D", ["", "", "", ""]),
  ex("jsonl", "0.5", answer_type="float", precision=2),
]
TOKENS = [
  "\\boxed{", "\\fbox{", "}", "{", "(", ")", "[", "]", "A", "B", "(C)", "D.", " ", "\n", ".", ",", "=", "^", "-",
  "\\frac", "\\sqrt", "[3]", "\\pi", "1", "10", "0.5", "9999999999", "e", "1e308", "$", "\\text{", "the answer is ",
  "Answer:", " is ", "so ", "°", "%", "\\left(", "\\right)", "1/0", "0^0", "(-8)^(1/3)", "\\", "**", "×", "…",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response=st.one_of(st.text(max_size=300), st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)))
def test_grading_never_raises(response):
  for example in EXAMPLES:
    correct, extracted = answers.grade(example["benchmark"], response, example)
    assert isinstance(correct, bool) and isinstance(extracted, str)


def test_pathological_inputs_are_bounded():
  nasty = ["\\boxed{" * 2000, "(" * 5000, "9" * 20000, "\\frac{" * 500 + "1" + "}" * 500, "A " * 20000 + "B"]
  for response in nasty:
    for example in EXAMPLES:
      answers.grade(example["benchmark"], response, example)
