"""Test setup: 8 simulated CPU devices (set before jax is imported) and tiny HF checkpoints."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

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
