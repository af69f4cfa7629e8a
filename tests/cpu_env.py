"""The XLA options of the suite, for its own process and the programs its tests start."""

import os

# LLVM optimisation off: the suite's tiny programs compile in about half the time and run
# about as fast (compiles, not runs, are most of the suite). Arithmetic stays IEEE float32
# (fast-math stays off); only the rounding of some reductions may differ from optimised code.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def device_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {SUITE_XLA_FLAGS}"


def cpu_env(devices: int = 1, **extra: str) -> dict:
  """os.environ for a program of `devices` simulated CPU devices, with the suite's options."""
  return dict(os.environ, XLA_FLAGS=device_flags(devices), **extra)
