"""Test setup: 8 simulated CPU devices (set before jax is imported) and tiny HF checkpoints."""

import os
import tempfile

from cpu_env import device_flags

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + device_flags(8)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One XLA compilation cache for the whole run, shared by both xdist workers and by the
# programs the tests start (they inherit the environment): a resumed run, a rerun of the demo
# or another test's model of the same shapes loads its executables instead of compiling them
# again (a quarter of the suite's time). Keyed by the program, its options and jax's version.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(
    tempfile.gettempdir(), f"catts_jax_xla_{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"
  ),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from tiny_hf import SEVEN_B_SHAPE, TINY, build_tiny_checkpoint  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
  """Small shapes: head_dim 16, window of 2x2 merged cells, one full-attention block."""
  return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", **TINY)


@pytest.fixture(scope="session")
def seven_b_ckpt(tmp_path_factory):
  """The real 7B proportions where they matter, at reduced depth/width: text head_dim 128,
  mrope_section [16, 24, 24], vision head_dim 80, window_size 112, full-attention blocks."""
  return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "seven_b_shape", **SEVEN_B_SHAPE)


@pytest.fixture(scope="session")
def tiny_tied_ckpt(tmp_path_factory):
  return build_tiny_checkpoint(
    tmp_path_factory.mktemp("ckpt") / "tiny_tied", tie_word_embeddings=True, **TINY
  )
