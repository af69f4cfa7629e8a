"""Activations carry logical axes at layer boundaries: under a mesh their layout is stated
(rows over data x fsdp, heads over tensor), without one nothing changes."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from catts_jax import sharding
from catts_jax.models.qwen2_5_vl import load_hf
from catts_jax.models.qwen2_5_vl.text import HIDDEN, Q_HEADS
from catts_jax.processing import Processor
from catts_jax.verify import make_cases


def test_constrain_is_the_identity_without_a_mesh():
  x = jnp.ones((8, 4, 16))
  assert sharding.constrain(x, HIDDEN) is x


def test_constrain_states_the_layout_under_a_mesh():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

  def same(x, axes, expected) -> bool:
    out = jax.jit(lambda y: sharding.constrain(y * 2, axes))(x)
    return out.sharding.is_equivalent_to(NamedSharding(mesh, expected), x.ndim)

  with jax.set_mesh(mesh):
    assert same(jnp.ones((8, 4, 16)), HIDDEN, P(("data", "fsdp"), None, None))
    assert same(jnp.ones((8, 4, 4, 2)), Q_HEADS, P(("data", "fsdp"), None, "tensor", None))
    assert not same(jnp.ones((8, 4, 4, 2)), Q_HEADS, P(("data", "fsdp")))
    # A batch the mesh does not divide stays whole rather than failing, and the model
    # dimension of an activation is never split (FSDP shards weights only).
    assert same(jnp.ones((3, 4, 16)), HIDDEN, P())


def _lowered_text(model, inputs) -> str:
  graphdef, state = nnx.split(model)
  fn = lambda s, x: nnx.merge(graphdef, s)(**x)[0]  # noqa: E731
  return jax.jit(fn).lower(state, inputs).as_text()


def test_decoder_layers_pin_their_activations_and_keep_the_logits(tiny_ckpt):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  processor = Processor(tiny_ckpt)
  prompts, images = make_cases(processor)["padded_batch"]
  batch = processor(prompts + prompts[:1], images + images[:1])  # 4 rows: over data x fsdp
  inputs = {k: jnp.asarray(v) for k, v in batch.model_inputs().items()}
  plain = load_hf(tiny_ckpt)
  expected, _ = nnx.jit(lambda m, x: m(**x))(plain, inputs)

  sharded = load_hf(tiny_ckpt, mesh=mesh)
  with jax.set_mesh(mesh):
    text = _lowered_text(sharded, inputs)
    got, _ = nnx.jit(lambda m, x: m(**x))(sharded, inputs)
  # embeddings + the layer's output, q, k, v (the stacked layers run one scanned body): the
  # layouts are stated, not propagated.
  assert text.count("sharding_constraint") >= 4 + 1
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4, rtol=1e-4)
  assert "sharding_constraint" not in _lowered_text(plain, inputs)
