"""Layers stacked on a leading axis and run by `jax.lax.scan`.

A stack of n identical layers is one module whose params carry a leading "layers" axis (never
sharded: every device holds its shard of every layer). The forward pass and the prefill scan
over it, so a model compiles one layer body whatever its depth; the decode loop runs the
layers one by one instead (`unstack`), so that each layer's KV cache stays its own buffer,
updated in place.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

LAYERS = "layers"  # logical axis of the stack (sharding.DEFAULT_RULES maps it to no mesh axis)


def stack(make: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs) -> nnx.Module:
  """n layers built by `make(rngs)`, each with its own random init, as one module whose params
  have a leading axis of size n named "layers"."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def build(rngs):
    return make(rngs)

  layers = build(rngs)
  for _, variable in nnx.iter_graph(layers):
    if isinstance(variable, nnx.Variable) and variable.has_metadata("logical_axes"):
      variable.set_metadata(logical_axes=(LAYERS, *variable.get_metadata()["logical_axes"]))
  return layers


def depth(layers: nnx.Module) -> int:
  return jax.tree.leaves(nnx.state(layers))[0].shape[0]


def layer(layers: nnx.Module, i: int) -> nnx.Module:
  """Layer i of a stack, as a plain module."""
  graphdef, state = nnx.split(layers)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def unstack(layers: nnx.Module) -> nnx.List:
  """Every layer of a stack as its own module, sliced once (a decode loop that indexed the stack
  at every step would copy each layer's weights at every step)."""
  return nnx.List([layer(layers, i) for i in range(depth(layers))])


def remat_policy(name: str):
  """A `jax.checkpoint_policies` entry by name ("" = save nothing: recompute the whole layer)."""
  if not name:
    return None
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None:
    raise ValueError(f"model.remat_policy={name!r}: not a jax.checkpoint_policies name")
  return policy


def scan(
  layers: nnx.Module,
  body: Callable,
  carry,
  xs=None,
  *,
  remat: bool = False,
  policy: str = "",
  unroll: bool = False,
):
  """`carry = body(layer_i, carry, xs_i)` for each layer i of the stack, as one `lax.scan`
  (`unroll`: as straight-line code); with `remat`, each layer's activations are recomputed in
  the backward pass (as `policy` says)."""
  one = lambda layer, carry, xs_i: (body(layer, carry, xs_i), None)  # noqa: E731
  return scan_outputs(layers, one, carry, xs, remat=remat, policy=policy, unroll=unroll)[0]


def scan_outputs(
  layers: nnx.Module,
  body: Callable,
  carry,
  xs=None,
  *,
  remat: bool = False,
  policy: str = "",
  unroll: bool = False,
):
  """`carry, y_i = body(layer_i, carry, xs_i)` for each layer i of the stack, as one
  `lax.scan` (see `scan`); returns the last carry and the ys stacked on a leading axis."""
  graphdef, state = nnx.split(layers)

  def step(carry, per_layer):
    state_i, xs_i = per_layer
    return body(nnx.merge(graphdef, state_i), carry, xs_i)

  if remat:
    step = jax.checkpoint(step, policy=remat_policy(policy), prevent_cse=False)
  return jax.lax.scan(step, carry, (state, xs), unroll=unroll)
