"""HF checkpoint <-> NNX state for Qwen2.5-VL.

Loading reads one tensor at a time from memory-mapped safetensors and places it straight
onto its (possibly sharded) devices; each device only receives its own slice. Export
streams one tensor at a time into safetensors files that transformers loads as
`Qwen2_5_VLForConditionalGeneration`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from catts_jax import safetensors_io, sharding
from catts_jax.models.qwen2_5_vl.config import ModelConfig
from catts_jax.models.qwen2_5_vl.model import Qwen2_5_VL

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Files an exported directory takes from the source checkpoint (tokenizer, processor, template).
# Not copied from a processor_dir: the weights' own files, and the provenance record of
# bundled checkpoints (it describes the source checkpoint, not the exported one).
WEIGHT_OR_CONFIG = ("config.json", INDEX_FILE, "training.json")


class CheckpointError(ValueError):
  """A checkpoint's weights cannot be loaded; the message names the tensor and file."""


# Old hub checkpoints (e.g. Qwen/Qwen2.5-VL-7B-Instruct) use these prefixes; transformers 5
# writes the right-hand ones. We read both and write the hub's, which every version loads.
_HUB_TO_NEW = (
  ("visual.", "model.visual."),
  ("model.layers.", "model.language_model.layers."),
  ("model.embed_tokens.", "model.language_model.embed_tokens."),
  ("model.norm.", "model.language_model.norm."),
)


def _to_new_name(name: str) -> str:
  for old, new in _HUB_TO_NEW:
    if name.startswith(old) and not name.startswith(new):
      return new + name[len(old) :]
  return name


def _to_hub_name(name: str) -> str:
  for old, new in _HUB_TO_NEW:
    if name.startswith(new):
      return old + name[len(new) :]
  return name


# --- the mapping ---------------------------------------------------------------------------
# Each entry: NNX path (tuple) -> (HF names, kind, extra). HF names (transformers-5 layout) is
# one name, or for a stacked layer param (models/qwen2_5_vl/stack.py: leading "layers" axis)
# a tuple of one name per layer.
# kinds: "linear" (HF [out, in]; extra = number of leading NNX dims that are inputs),
#        "conv" (HF Conv3d [out, C, T, p, p] used as a linear on flattened patches),
#        "vector" (HF 1-D, NNX maybe [heads, head_dim]: biases, norm weights),
#        "copy" (same layout: the embedding table).
Entry = tuple[str | tuple[str, ...], str, int]


def weight_map(cfg: ModelConfig) -> dict[tuple, Entry]:
  m: dict[tuple, Entry] = {}

  def stacked(path: tuple, hf_prefix: str, n: int, layer_entries) -> None:
    """Entries of a stack of n layers: one NNX param per name, one HF tensor per layer."""
    one: dict[tuple, Entry] = {}
    layer_entries(one)
    for rel, (hf, kind, n_in) in one.items():
      m[(*path, *rel)] = (tuple(f"{hf_prefix}.{i}.{hf}" for i in range(n)), kind, n_in)

  def linear(into, path, hf, n_in=1, bias=True):
    into[(*path, "kernel")] = (f"{hf}.weight", "linear", n_in)
    if bias:
      into[(*path, "bias")] = (f"{hf}.bias", "vector", 0)

  def norm(into, path, hf):
    into[(*path, "weight")] = (f"{hf}.weight", "vector", 0)

  def vision_block(into):
    norm(into, ("norm1",), "norm1")
    norm(into, ("norm2",), "norm2")
    linear(into, ("attn", "qkv"), "attn.qkv")
    linear(into, ("attn", "proj"), "attn.proj", n_in=2)
    for proj in ("gate_proj", "up_proj", "down_proj"):
      linear(into, ("mlp", proj), f"mlp.{proj}")

  def decoder_layer(into):
    norm(into, ("input_layernorm",), "input_layernorm")
    norm(into, ("post_attention_layernorm",), "post_attention_layernorm")
    for proj in ("q_proj", "k_proj", "v_proj"):
      linear(into, ("self_attn", proj), f"self_attn.{proj}")
    linear(into, ("self_attn", "o_proj"), "self_attn.o_proj", n_in=2, bias=False)
    for proj in ("gate_proj", "up_proj", "down_proj"):
      linear(into, ("mlp", proj), f"mlp.{proj}", bias=False)

  v = "model.visual"
  m[("visual", "patch_embed", "kernel")] = (f"{v}.patch_embed.proj.weight", "conv", 1)
  stacked(("visual", "blocks"), f"{v}.blocks", cfg.vision.depth, vision_block)
  norm(m, ("visual", "merger", "ln_q"), f"{v}.merger.ln_q")
  linear(m, ("visual", "merger", "fc1"), f"{v}.merger.mlp.0")
  linear(m, ("visual", "merger", "fc2"), f"{v}.merger.mlp.2")

  t = "model.language_model"
  m[("language_model", "embed_tokens")] = (f"{t}.embed_tokens.weight", "copy", 0)
  stacked(("language_model", "layers"), f"{t}.layers", cfg.text.num_layers, decoder_layer)
  norm(m, ("language_model", "norm"), f"{t}.norm")
  if not cfg.tie_word_embeddings:
    m[("lm_head",)] = ("lm_head.weight", "linear", 1)
  return m


def _hf_shape(kind: str, n_in: int, shape: tuple[int, ...], cfg: ModelConfig) -> tuple[int, ...]:
  if kind == "conv":
    v = cfg.vision
    return (shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  if kind == "linear":
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
  if kind == "vector":
    return (math.prod(shape),)
  return shape


def hf_to_nnx(array: np.ndarray, kind: str, n_in: int, shape: tuple[int, ...]) -> np.ndarray:
  if kind in ("linear", "conv"):
    return array.reshape(array.shape[0], -1).T.reshape(shape)
  return array.reshape(shape)


def nnx_to_hf(array: np.ndarray, kind: str, n_in: int, hf_shape: tuple[int, ...]) -> np.ndarray:
  if kind in ("linear", "conv"):
    rows = math.prod(array.shape[:n_in])
    return array.reshape(rows, -1).T.reshape(hf_shape)
  return array.reshape(hf_shape)


# --- reading -------------------------------------------------------------------------------


class _CheckpointReader:
  """Finds each tensor in a single-file or sharded (index.json) safetensors checkpoint."""

  def __init__(self, path: pathlib.Path):
    index = path / INDEX_FILE
    if index.is_file():
      weight_map_ = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map_.values()))
    elif (path / SINGLE_FILE).is_file():
      files = [SINGLE_FILE]
    else:
      found = sorted(p.name for p in path.glob("*.safetensors"))
      if not found:
        bins = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        hint = f" (found {bins}: pickled weights are not loaded; convert to safetensors)" if bins else ""
        raise CheckpointError(f"{path}: no safetensors weights{hint}")
      files = found
    self.files = {name: safetensors_io.SafetensorsFile(path / name) for name in files}
    self.location: dict[str, str] = {}
    for file_name, f in self.files.items():
      for key in f.keys():
        self.location[_to_new_name(key)] = (file_name, key)

  def get(self, name: str) -> tuple[np.ndarray, str]:
    if name not in self.location:
      raise CheckpointError(
        f"{name}: missing weight (looked in {', '.join(self.files)}; hub spelling {_to_hub_name(name)!r} too)"
      )
    file_name, key = self.location[name]
    return self.files[file_name].get(key), file_name


def _hf_names(mapping: Mapping[tuple, Entry]) -> Iterator[str]:
  for names, _, _ in mapping.values():
    yield from (names,) if isinstance(names, str) else names


def _shard_reader(view: np.ndarray, dtype) -> Callable[[tuple], np.ndarray]:
  """A device shard (an index tuple) of a host tensor, converted to `dtype` (only the shard)."""
  return lambda idx: np.asarray(view[idx], dtype)


def _stacked_shard_reader(layers: list[np.ndarray], dtype) -> Callable[[tuple], np.ndarray]:
  """A device shard of the stack of `layers` (leading layer axis, unsharded): the shard's
  slice of every layer, stacked on the host. No device holds a layer twice and nothing is
  compiled to stack."""
  return lambda idx: np.stack([np.asarray(layer[idx[1:]], dtype) for layer in layers[idx[0]]])


def abstract_model(cfg: ModelConfig) -> nnx.Module:
  """The model's structure with ShapeDtypeStructs instead of arrays (no memory used)."""
  return nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))


def check_weights(
  path: str | pathlib.Path, cfg: ModelConfig | None = None, *, allow_partial: bool = False
) -> None:
  """CheckpointError unless the checkpoint's tensors are exactly those its config.json (or
  `cfg`) describes: a config with fewer layers than the weights would otherwise load a
  different model. Reads the safetensors headers only. `allow_partial`: extra tensors are
  allowed (missing ones never are)."""
  path = pathlib.Path(path)
  cfg = cfg or ModelConfig.from_pretrained(path)
  _check_names(path, _CheckpointReader(path), weight_map(cfg), allow_partial)


def _check_names(path: pathlib.Path, reader: _CheckpointReader, mapping, allow_partial: bool) -> None:
  wanted = set(_hf_names(mapping))
  missing = sorted(wanted - set(reader.location))
  unused = sorted(set(reader.location) - wanted)
  if missing:
    reader.get(missing[0])  # the error naming it and the files looked in
  if unused and not allow_partial:
    raise CheckpointError(
      f"{path}: {len(unused)} checkpoint tensors are not part of the model config.json describes, "
      f"e.g. {unused[:3]}: config.json and the weights disagree (allow_partial loads it anyway)"
    )


def load_hf(
  path: str | pathlib.Path,
  cfg: ModelConfig | None = None,
  *,
  mesh: Mesh | None = None,
  rules: Mapping | None = None,
  allow_partial: bool = False,
) -> Qwen2_5_VL:
  """Build the NNX model from an HF checkpoint directory, sharded over `mesh` if given.

  `cfg` defaults to the directory's config.json; pass one to change dtypes. Every tensor must
  be one the config implies (`check_weights`; `allow_partial` ignores extra ones).
  """
  path = pathlib.Path(path)
  cfg = cfg or ModelConfig.from_pretrained(path)
  reader = _CheckpointReader(path)
  model = abstract_model(cfg)
  graphdef, state = nnx.split(model)
  shardings = sharding.state_shardings(state, mesh, rules) if mesh is not None else None
  mapping = weight_map(cfg)
  flat = dict(nnx.to_flat_state(state))
  if set(flat) != set(mapping):
    raise RuntimeError(f"weight map out of date: {sorted(set(flat) ^ set(mapping))}")
  _check_names(path, reader, mapping, allow_partial)
  flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}

  def host(hf_name, kind, n_in, shape):
    """One HF tensor as a memory-mapped host view in the NNX layout of `shape`."""
    raw, file_name = reader.get(hf_name)
    expected = _hf_shape(kind, n_in, shape, cfg)
    if tuple(raw.shape) != expected:
      raise CheckpointError(
        f"{hf_name} in {path / file_name}: shape {tuple(raw.shape)}, but config.json implies {expected}"
      )
    return hf_to_nnx(raw, kind, n_in, shape)

  for nnx_path, variable in flat.items():
    hf_names, kind, n_in = mapping[nnx_path]
    abstract = variable.get_value()
    shape, dtype = tuple(abstract.shape), abstract.dtype
    if isinstance(hf_names, str):
      shard = _shard_reader(host(hf_names, kind, n_in, shape), dtype)
    else:
      shard = _stacked_shard_reader([host(name, kind, n_in, shape[1:]) for name in hf_names], dtype)
    target = flat_shardings.get(nnx_path)
    if target is None:
      variable.set_value(jnp.asarray(shard((slice(None),) * len(shape))))
    else:
      variable.set_value(jax.make_array_from_callback(shape, target, shard))

  return nnx.merge(graphdef, nnx.from_flat_state(flat))


# --- writing -------------------------------------------------------------------------------


def _parse_size(size: str | int) -> int:
  if isinstance(size, int):
    return size
  units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
  s = size.strip().upper()
  for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
    if s.endswith(unit):
      return int(float(s[: -len(unit)]) * factor)
  return int(s)


def save_hf(
  model: Qwen2_5_VL,
  out_dir: str | pathlib.Path,
  *,
  processor_dir: str | pathlib.Path | None = None,
  max_shard_size: str | int = "5GB",
) -> pathlib.Path:
  """Write model weights, config.json and (copied from `processor_dir`) tokenizer/processor files.

  Tensors are gathered to the host one at a time; shards stay below `max_shard_size`. Every
  file is written whole in a staging directory beside `out_dir` first, then moved into place
  (`os.replace`, one file at a time) and the old export's other weight files removed: an
  export that fails part way leaves the earlier one in `out_dir` as it was.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  staging = out.with_name(f".{out.name}.partial")
  shutil.rmtree(staging, ignore_errors=True)  # what a failed export left
  staging.mkdir()
  cfg = model.cfg
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  mapping = weight_map(cfg)
  dtype = np.dtype(jnp.dtype(cfg.param_dtype))

  entries = []  # (hub name, hf shape, nnx path, layer of a stack or None, kind, n_in)
  for nnx_path, (hf_names, kind, n_in) in mapping.items():
    shape = tuple(flat[nnx_path].get_value().shape)
    if isinstance(hf_names, str):
      entries.append((_to_hub_name(hf_names), _hf_shape(kind, n_in, shape, cfg), nnx_path, None, kind, n_in))
      continue
    hf_shape = _hf_shape(kind, n_in, shape[1:], cfg)
    entries += [(_to_hub_name(name), hf_shape, nnx_path, i, kind, n_in) for i, name in enumerate(hf_names)]

  limit = _parse_size(max_shard_size)
  shards: list[list] = [[]]
  size = 0
  for entry in entries:
    nbytes = math.prod(entry[1]) * dtype.itemsize
    if shards[-1] and size + nbytes > limit:
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += nbytes

  by_name = {e[0]: e for e in entries}

  def produce(name):
    _, hf_shape, nnx_path, layer, kind, n_in = by_name[name]
    value = flat[nnx_path].get_value()
    host = np.asarray(jax.device_get(value if layer is None else value[layer]))
    return nnx_to_hf(host, kind, n_in, hf_shape)

  names = (
    [SINGLE_FILE]
    if len(shards) == 1
    else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  )
  for file_name, shard in zip(names, shards):
    safetensors_io.write(staging / file_name, [(e[0], e[1], dtype) for e in shard], produce)
  if len(shards) > 1:
    index = {
      "metadata": {"total_size": sum(math.prod(e[1]) * dtype.itemsize for e in entries)},
      "weight_map": {e[0]: f for f, shard in zip(names, shards) for e in shard},
    }
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=2))

  (staging / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
  if processor_dir is not None:
    for src in _processor_files(pathlib.Path(processor_dir)):
      shutil.copy2(src, staging / src.name)
  written = {p.name for p in staging.iterdir()}
  for name in sorted(written):
    os.replace(staging / name, out / name)
  for stale in list(out.glob("*.safetensors")) + [out / INDEX_FILE]:
    if stale.name not in written:
      stale.unlink(missing_ok=True)
  staging.rmdir()
  return out


def _processor_files(src: pathlib.Path) -> Iterator[pathlib.Path]:
  for p in sorted(src.iterdir()):
    if p.is_file() and p.name not in WEIGHT_OR_CONFIG and p.suffix in (".json", ".txt", ".jinja", ".model"):
      yield p
