"""Flag parsing for the entry points under train/ and infer/: one style everywhere.

Every entry point defines its flags with absl (`--name value` or `--name=value`, underscores)
and its settings with an ml_collections config file (`--config FILE[:ARG]`, overridden by
`--config.a.b=value`). Flags live on a fresh `FlagValues` per call, not on absl's global
one, so `main(argv)` can run twice in one process (tests) and two entry points never clash.

    def define(fv):
      config_flags.DEFINE_config_file("config", "configs/catts.py", "settings", flag_values=fv)
      flags.DEFINE_string("out", None, "output directory", required=True, flag_values=fv)

    def main(argv=None) -> int:
      args = cli.parse(define, argv, __doc__)
      ... args.config, args.out ...
"""

from __future__ import annotations

import contextlib
import difflib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from absl import flags


@contextlib.contextmanager
def _sys_argv(argv: list[str]) -> Iterator[None]:
  # config_flags reads `--config.x=y` overrides from sys.argv when the config is parsed.
  saved = sys.argv
  sys.argv = argv
  try:
    yield
  finally:
    sys.argv = saved


def parse(
  define: Callable[[flags.FlagValues], None], argv: Sequence[str] | None = None, doc: str | None = None
) -> flags.FlagValues:
  """Flags defined by `define(fv)`, parsed from `argv` (default: sys.argv[1:]); read them as
  attributes of the result. `--help` prints `doc` and the flags and exits 0; a bad or unknown
  flag, or a missing required one, prints one line and exits 2."""
  argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
  fv = flags.FlagValues()
  try:
    with _sys_argv(argv):
      define(fv)
      if any(a in ("-h", "--help", "-help") for a in argv[1:]):
        print((doc or "").strip() + "\n\nflags:\n" + fv.get_help())
        raise SystemExit(0)
      extra = fv(argv)
  except (KeyError, AttributeError) as e:
    key = _unknown_key(argv, e)
    if key is None:  # not an override's fault: a bug in the config file itself, keep its traceback
      raise
    usage_error(f"unknown config key {key}{_suggestion(define, argv, key.strip(chr(39)))}")
  except flags.Error as e:  # a bad, unknown or missing flag, or a bad override value
    usage_error(str(e))
  if len(extra) > 1:
    usage_error(f"unexpected arguments {extra[1:]} (flags look like --name=value)")
  if "compilation_cache" in fv:  # before the entry point compiles anything
    use_compilation_cache(fv.compilation_cache)
  return fv


def define_compilation_cache(fv: flags.FlagValues) -> None:
  """--compilation_cache, which `parse` applies (`use_compilation_cache`)."""
  flags.DEFINE_string(
    "compilation_cache",
    None,
    "a directory for XLA's persistent compilation cache: programs an earlier run compiled are "
    "read back instead of compiled again (a rerun or a resumed run skips its compiles)",
    flag_values=fv,
  )


def use_compilation_cache(directory: str | None) -> None:
  """JAX's persistent compilation cache in `directory` (None: off). Call before the first
  compile. JAX keys each program by its HLO, the compile options and the jax and XLA
  versions, and keeps those that took at least `jax_persistent_cache_min_compile_time_secs`
  (default 1 s) to compile."""
  if directory:
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))


def define_training_flags(fv: flags.FlagValues) -> None:
  """The flags every training entry point shares: --override_resume, --rebuild and
  --compilation_cache."""
  flags.DEFINE_bool(
    "override_resume",
    False,
    "resume although the config differs from the run's (DIR/run.json); the change is recorded "
    "in run.json's history and in train.jsonl",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "rebuild",
    False,
    "build the dataset's cache again (a changed data folder is rebuilt anyway)",
    flag_values=fv,
  )
  define_compilation_cache(fv)


def _unknown_key(argv: Sequence[str], error: Exception) -> str | None:
  """The `--config.a.b=...` override that names a key the config lacks (config_flags' error
  names only the missing part, quoted, maybe followed by 'Did you mean ...'), or None."""
  text = str(error.args[0] if error.args else error)
  missing = next(iter(re.findall(r"\w+", text)), "")
  for arg in argv[1:]:
    key = arg.removeprefix("--config.").split("=", 1)[0]
    if arg.startswith("--config.") and missing in key.split("."):
      return repr(key)
  return None


def _config_keys(value, prefix: str = "") -> list[str]:
  keys = []
  for k, v in value.items():
    keys += _config_keys(v, f"{prefix}{k}.") if hasattr(v, "items") else [f"{prefix}{k}"]
  return keys


def _suggestion(define: Callable[[flags.FlagValues], None], argv: Sequence[str], key: str) -> str:
  """ "; did you mean 'tts.tau'?" when the config (the --config file given, or the default) has
  a close key; "" otherwise, or when the config cannot be read. The flags are defined again
  without the overrides: the failing one stopped the config flag's definition."""
  try:
    fv = flags.FlagValues()
    with _sys_argv([argv[0]]):
      define(fv)
    flag = fv["config"]
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    given += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    config = flag.parser.parse(given[-1]) if given else flag.default
    close = difflib.get_close_matches(key, _config_keys(config), n=1, cutoff=0.6)
  except Exception:  # noqa: BLE001 - a suggestion is a courtesy; the error stands without it
    return ""
  return f"; did you mean {close[0]!r}?" if close else ""


def usage_error(message: str) -> NoReturn:
  """One line on stderr, exit status 2 (as for a bad flag)."""
  print(f"error: {message.splitlines()[0]}", file=sys.stderr)
  raise SystemExit(2)
