"""Abstract train state: params and optimizer state as sharded `jax.ShapeDtypeStruct`s laid out
exactly as the Learner lays them out, without allocating anything; their PartitionSpecs as a
table (the golden shardings) and their bytes per chip."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np
from flax import nnx

from catts_jax import sharding
from catts_jax.models.qwen2_5_vl import Qwen2_5_VL
from catts_jax.rl.learner import make_optimizer, opt_state_shardings


@dataclasses.dataclass
class AbstractState:
  model: object  # abstract nnx module (ShapeDtypeStruct leaves)
  graphdef: object
  rest: object
  optimizer: object
  params: object  # nnx.State of ShapeDtypeStruct with shardings
  opt_state: object
  param_shardings: object
  opt_shardings: object


def abstract_train_state(model_cfg, opt_cfg, mesh, rules=None, model=None) -> AbstractState:
  """Params and optimizer state as sharded ShapeDtypeStructs, exactly as the Learner lays them
  out, without allocating anything. `mesh` may be a `jax.sharding.AbstractMesh`."""
  if model is None:
    model = nnx.eval_shape(lambda: Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # One NamedSharding per param, in the params' own tree structure (Param nodes kept).
  per_variable = jax.tree.leaves(sharding.state_shardings(params, mesh, rules))
  param_sh = jax.tree.unflatten(jax.tree.structure(params), per_variable)
  optimizer = make_optimizer(opt_cfg, params)
  opt_sh = opt_state_shardings(optimizer, params, param_sh, mesh)
  sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
  abstract_params = jax.tree.map(sds, params, param_sh)
  abstract_opt = jax.tree.map(sds, jax.eval_shape(optimizer.init, params), opt_sh)
  return AbstractState(model, graphdef, rest, optimizer, abstract_params, abstract_opt, param_sh, opt_sh)


def _path_name(path) -> str:
  parts = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        parts.append(str(getattr(p, attr)))
        break
  return "/".join(x for x in parts if x != "value")


def spec_table(state: AbstractState) -> dict[str, str]:
  """`tree/path -> "shape dtype PartitionSpec"` for every param and optimizer-state leaf.
  Decoder layers and vision blocks whose entries all agree are folded into one `*` entry
  (an entry for one index appears as soon as that layer differs from the others)."""
  entries = {}
  for tree, values in (("params", state.params), ("opt_state", state.opt_state)):
    for path, x in jax.tree_util.tree_flatten_with_path(values)[0]:
      spec = x.sharding.spec if x.sharding is not None else None
      entries[f"{tree}/{_path_name(path)}"] = f"{tuple(x.shape)} {x.dtype} {spec}"
  folded: dict[str, dict[str, str]] = {}
  for name, value in entries.items():
    key = re.sub(r"/(layers|blocks)/\d+/", r"/\1/*/", name)
    folded.setdefault(key, {})[name] = value
  out = {}
  for key, members in folded.items():
    if key != next(iter(members)) and len(set(members.values())) == 1:
      out[key] = f"{next(iter(members.values()))} x{len(members)}"
    else:
      out.update(members)
  return out


def per_chip_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total
