"""The mutation runs' harness: each mutant (file, original text, mutated text, what it does)
applied alone to one library folder, the given tests run, the file restored; every mutant's
result printed and written to a JSON file. Used by mutate_tts.py and mutate_expert.py.
"""

import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def failing_tests(tests: list[str], first_only: bool) -> list[str]:
  """The tests that fail (none: the mutant survived); `first_only` stops at the first."""
  cmd = [
    sys.executable,
    "-m",
    "pytest",
    "-q",
    "-rf",
    "-p",
    "no:cacheprovider",
    *(["-x"] if first_only else []),
    *tests,
  ]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  failed = re.findall(r"^FAILED (\S+?)(?: - |$)", done.stdout, re.MULTILINE)
  if done.returncode and not failed:
    raise SystemExit(f"pytest failed without a failing test:\n{done.stdout[-2000:]}")
  return failed


def run(mutants, folder: str, tests: list[str], out: str, first_only: bool = False) -> list[dict]:
  """Apply each of `mutants` to ROOT/folder/<file> alone and run `tests`; results to `out`."""
  results = []
  for name, old, new, what in mutants:
    path = ROOT / folder / name
    text = path.read_text()
    if text.count(old) != 1:
      raise SystemExit(f"{name}: mutant {what!r} does not match exactly once")
    try:
      path.write_text(text.replace(old, new))
      failed = failing_tests(tests, first_only)
    finally:
      path.write_text(text)
    results.append({"file": name, "mutant": what, "caught": bool(failed), "by": failed})
    print(f"{'caught  ' if failed else 'SURVIVED'} {name}: {what}: {', '.join(failed)}", flush=True)
  print(json.dumps({"caught": sum(r["caught"] for r in results), "of": len(results)}))
  pathlib.Path(out).write_text(json.dumps(results, indent=2) + "\n")
  return results
