"""Every entry point speaks one flag style (catts_jax/cli.py): absl flags with underscores,
settings files overridden by `--config.a.b=value`, `--help` listing the flags."""

from __future__ import annotations

import importlib
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags

from catts_jax import cli

ROOT = pathlib.Path(__file__).parents[1]
ENTRY_POINTS = sorted(
  f"{p.parent.name}.{p.stem}" for folder in ("train", "infer") for p in (ROOT / folder).glob("[a-z]*.py")
)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_one_flag_style(name, capsys):
  module = importlib.import_module(name)
  fv = flags.FlagValues()
  module.define(fv)
  names = [f for f in fv if not f.startswith(("flagfile", "undefok"))]
  assert names, name
  assert all(re.fullmatch(r"[a-z][a-z0-9_]*", f) for f in names), names  # no hyphens, no capitals
  with pytest.raises(SystemExit) as exit_:
    module.main(["--help"])
  assert exit_.value.code == 0
  text = capsys.readouterr().out
  assert all(f"--{f}" in text or f"--[no]{f}" in text for f in names), name
  with pytest.raises(SystemExit) as exit_:
    module.main(["--no_such_flag=1"])
  assert exit_.value.code == 2
  assert "no_such_flag" in capsys.readouterr().err


def test_config_overrides_in_both_halves():
  """`--config.a.b=value` sets the config of train.compile and infer.catts alike, and an
  unknown key is one clear error."""
  from infer import catts
  from train import compile as plan

  argv = ["--config=configs/cdrl_qwen2_5_vl.py:7b,v5e-16", "--out=o", "--config.rollout.group_size=4"]
  args = cli.parse(plan.define, argv)
  assert args.config.rollout.group_size == 4
  args = cli.parse(catts.define, ["--ckpt=x", "--benchmark=synthetic", "--out=o", "--config.tts.tau=0.3"])
  assert args.config.tts.tau == 0.3
  assert cli.parse(catts.define, ["--ckpt=x", "--benchmark=synthetic", "--out=o"]).config.tts.tau != 0.3
  with pytest.raises(SystemExit) as exit_:
    cli.parse(catts.define, ["--ckpt=x", "--benchmark=synthetic", "--out=o", "--config.tts.nope=1"])
  assert exit_.value.code == 2


CACHED_RUN = """
import sys
import jax, jax.monitoring, jax.numpy as jnp
from catts_jax import cli
hits = []
jax.monitoring.register_event_listener(lambda event, **_: hits.append(event == "/jax/compilation_cache/cache_hits"))
cli.parse(cli.define_compilation_cache, sys.argv[1:])  # applies --compilation_cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # keep even this small program
print(float(jax.jit(lambda x: jnp.sin(x).sum() * 2)(jnp.arange(3.0))), sum(hits))
"""


def test_compilation_cache_reads_back_an_earlier_runs_programs(tmp_path):
  """--compilation_cache DIR: the first run compiles and writes DIR, a second run reads the
  program back (a cache hit) and computes the same value."""
  cache = tmp_path / "xla"
  run = lambda: subprocess.run(  # noqa: E731
    [sys.executable, "-c", CACHED_RUN, f"--compilation_cache={cache}"],
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  ).stdout.split()
  first = run()
  assert first[1] == "0" and any(cache.iterdir())
  second = run()
  assert second[0] == first[0] and int(second[1]) >= 1
