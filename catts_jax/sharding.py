"""Device mesh (data, fsdp, tensor) and logical-axis rules.

Params carry logical axis names (`logical_axes` metadata, see models/qwen2_5_vl/layers.py),
and so do activations at layer boundaries (`constrain`); a rules table maps each name to
mesh axes. One model definition thus serves data parallelism, FSDP, tensor parallelism and
their mixes, chosen by config.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated).
# Megatron-style tensor parallelism: heads and MLP hidden on "tensor"; FSDP shards the
# model dimension of every matrix; activations' batch goes over data x fsdp, their length
# and model dimension stay whole (FSDP shards weights, not activations).
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
  "batch": ("data", "fsdp"),
  "length": None,
  "activation_embed": None,
  "vocab": "tensor",
  "embed": "fsdp",
  "mlp": "tensor",
  "q_heads": "tensor",
  "kv_heads": "tensor",
  "head_dim": None,
  "norm": None,
  "layers": None,  # the leading axis of stacked layers (models/qwen2_5_vl/stack.py)
}


def mesh_sizes(shape: Mapping[str, int] | None, n: int) -> dict[str, int]:
  """Axis sizes over MESH_AXES for `n` devices. Unspecified axes get size 1; one axis may be -1
  (or, when none is, `data` when it is left out) to take the devices that remain."""
  shape = dict(shape or {})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
  free = [a for a in MESH_AXES if shape.get(a) == -1] or ([] if "data" in shape else ["data"])
  if len(free) > 1:
    raise ValueError(f"mesh {shape}: only one axis may be -1")
  if free:
    rest = math.prod(shape.get(a, 1) for a in MESH_AXES if a != free[0])
    if n % rest:
      raise ValueError(f"mesh {shape} does not divide {n} devices")
    shape[free[0]] = n // rest
  sizes = {a: shape.get(a, 1) for a in MESH_AXES}
  if math.prod(sizes.values()) != n:
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {n}")
  return sizes


def parse_mesh(text: str) -> dict[str, int]:
  """'data=1,fsdp=16,tensor=1' -> {'data': 1, 'fsdp': 16, 'tensor': 1} (a mesh given on a
  command line or as a config string)."""
  out = {}
  for part in text.split(","):
    name, _, size = part.partition("=")
    if not size.strip().lstrip("-").isdigit():
      raise ValueError(f"mesh {text!r}: expected axis=size pairs such as data=1,fsdp=16,tensor=1")
    out[name.strip()] = int(size)
  return out


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over MESH_AXES with the sizes of `mesh_sizes` (default: all devices on `data`)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_sizes(shape, len(devices))
  return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), MESH_AXES)


def rearrange_mesh(mesh: Mesh, shape: Mapping[str, int]) -> Mesh:
  """The same devices, in the same order, as a mesh of another `shape` (e.g. a rollout mesh
  beside the trainer's): one jitted program may then take arrays laid out on either."""
  sizes = mesh_sizes(shape, mesh.devices.size)
  return Mesh(mesh.devices.reshape(tuple(sizes.values())), MESH_AXES)


def logical_to_spec(
  axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Mapping | None = None
) -> PartitionSpec:
  """PartitionSpec for one array. A dim whose size the mesh axes do not divide is replicated
  (e.g. 2 KV heads on tensor=4), and a mesh axis is used at most once per array."""
  rules = DEFAULT_RULES if rules is None else rules
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    target = rules.get(name) if name is not None else None
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    mesh_axes = tuple(a for a in mesh_axes if mesh.shape.get(a, 1) > 1 and a not in used)
    if not mesh_axes or size % int(np.prod([mesh.shape[a] for a in mesh_axes])):
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*spec)


def use_mesh(mesh: Mesh | None):
  """`jax.set_mesh(mesh)` as a context, or nothing without a mesh (one device)."""
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def platform(mesh: Mesh | None) -> str:
  """The platform programs for `mesh` compile for ("cpu", "gpu", "tpu"): its devices' (the
  compile-only TPUs of a plan included), or jax's default backend without a mesh."""
  return jax.default_backend() if mesh is None else mesh.devices.flat[0].platform


def constrain(x: jax.Array, axes: Sequence[str | None], rules: Mapping | None = None) -> jax.Array:
  """Pin an activation's layout by logical axis names, e.g. `("batch", "length", "activation_embed")`,
  under the mesh set by `jax.set_mesh(mesh)`. Without one it is the identity, so code run on
  one device, or by callers that set no mesh, compiles exactly as it would without it."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh, rules))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Mapping | None = None) -> nnx.State:
  """NamedSharding for every leaf of an (abstract or concrete) nnx.State, from its logical axes."""

  def one(variable):
    axes = variable.get_metadata().get("logical_axes")
    shape = variable.get_value().shape
    if axes is None:
      return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Mapping | None = None) -> nnx.Module:
  """Place an existing model's params on the mesh (in place) and return it."""
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model


# Logical axes of the model inputs and per-row fields (`input_shardings`); a field not named
# here is per row on its first axis.
INPUT_AXES: dict[str, tuple[str | None, ...]] = {
  "positions": (None, "batch", None),  # [3, B, T]
  # Image slots [I, S, ...] over the batch axes too: each device encodes its own slots, and
  # the model gathers the merged features whole before rows read them (by "image_index",
  # per row like the other [B, T] inputs).
  "pixel_values": ("batch", None, None),
  "patch_pos": ("batch", None, None),
  "patch_image": ("batch", None),
  # The merged features of every slot (`vision_program`), whole on every device.
  "image_features": (None, "activation_embed"),
}


def input_axes(name: str, ndim: int) -> tuple[str | None, ...]:
  """The logical axes of one model input or per-row field, by name."""
  if ndim == 0:
    return ()
  return INPUT_AXES.get(name, ("batch",) + (None,) * (ndim - 1))


def input_shardings(inputs: Mapping[str, object], mesh: Mesh, rules: Mapping | None = None) -> dict:
  """NamedSharding of each named input (arrays or ShapeDtypeStructs): rows and image slots
  over data x fsdp where they divide, scalars replicated. The sampler, the scorer and the
  train step all lay their inputs out with this one function."""
  out = {}
  for name, x in inputs.items():
    shape = np.shape(x) if not hasattr(x, "shape") else x.shape
    spec = logical_to_spec(input_axes(name, len(shape)), shape, mesh, rules)
    out[name] = NamedSharding(mesh, spec)
  return out


def put(values, shardings):
  """Host (numpy) arrays -> global arrays with these shardings, each device taking its shard;
  works with several processes, where every process holds the same global values."""
  return jax.tree.map(
    lambda v, s: jax.make_array_from_callback(np.shape(v), s, lambda index: np.asarray(v)[index]),
    values,
    shardings,
  )


def to_host(x) -> np.ndarray:
  """A global array as numpy on every process (gathered from the other processes' devices
  when it spans them)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
