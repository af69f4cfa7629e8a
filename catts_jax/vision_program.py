"""The vision tower as its own jitted program, shared by the scorer and the sampler.

With the tower inside every scoring and prefill program, each (rows, length, response) shape
compiled the tower again; it is half of such a program's compile on CPU
(docs/experiments/vision_program.py). Here it compiles once per image-slot shape and layout,
and the scorer's and prefill's programs take its merged features (`image_features`) in place of
the pixels: the same arithmetic, so the same numbers. The jitted function takes the model's
graphdef as a static argument, so policies of one architecture (an SFT and a CDRL checkpoint)
share its compiled programs too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from catts_jax import sharding

PIXEL_INPUTS = ("pixel_values", "patch_pos", "patch_image")

traces = 0  # how many times the tower has been traced (one per compiled program)


def _features(graphdef, state, pixels: dict) -> jax.Array:
  global traces
  traces += 1
  return nnx.merge(graphdef, state).image_features(**pixels)


@functools.cache
def _jitted(out_sharding):
  return jax.jit(_features, static_argnums=0, out_shardings=out_sharding)


def forget() -> None:
  """Drop the jitted functions (with `jax.clear_caches`: their programs; `policy.forget_compiled`)."""
  _jitted.cache_clear()


def _split(inputs: dict) -> tuple[dict, dict]:
  return {k: inputs[k] for k in PIXEL_INPUTS}, {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS}


def features_shape(cfg, pixels: dict) -> jax.ShapeDtypeStruct:
  """The merged features of these slots: [slots * patches / merge^2, hidden], compute dtype."""
  slots, patches = pixels["pixel_values"].shape[:2]
  merged = slots * patches // cfg.vision.spatial_merge_size**2
  return jax.ShapeDtypeStruct((merged, cfg.vision.out_hidden_size), jnp.dtype(cfg.compute_dtype))


def _out_sharding(cfg, pixels: dict, mesh: Mesh | None):
  """The features' layout as the scorer and prefill take them (`sharding.input_shardings`)."""
  if mesh is None:
    return None
  return sharding.input_shardings({"image_features": features_shape(cfg, pixels)}, mesh)["image_features"]


def with_features(cfg, graphdef, state, inputs: dict, mesh: Mesh | None = None) -> dict:
  """`inputs` with the image slots' pixels replaced by their merged features (one call of the
  vision program; `cfg`: the model's config); inputs without images come back as they are."""
  if "pixel_values" not in inputs:
    return inputs
  pixels, rest = _split(inputs)
  out_sharding = _out_sharding(cfg, pixels, mesh)
  with sharding.use_mesh(mesh):
    return rest | {"image_features": _jitted(out_sharding)(graphdef, state, pixels)}


def lower(cfg, graphdef, state, inputs: dict, mesh: Mesh | None = None) -> tuple[jax.stages.Lowered, dict]:
  """Lower the vision program for (possibly abstract, sharded) `inputs` with images, as
  `with_features` runs it; returns it and the inputs the next program takes (the features as
  a ShapeDtypeStruct laid out as `with_features` returns them)."""
  pixels, rest = _split(inputs)
  out_sharding = _out_sharding(cfg, pixels, mesh)
  with sharding.use_mesh(mesh):
    jitted = _jitted(out_sharding)
    lowered = jitted.lower(graphdef, state, pixels)
  shape = features_shape(cfg, pixels)
  features = jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=out_sharding)
  return lowered, rest | {"image_features": features}
