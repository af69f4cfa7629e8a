"""HF checkpoint <-> NNX state: round trip, sharded checkpoints, clear errors."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from tiny_hf import TINY, build_tiny_checkpoint

from catts_jax import safetensors_io
from catts_jax.models.qwen2_5_vl import CheckpointError, ConfigError, check_weights, load_hf, save_hf
from catts_jax.processing import Processor
from catts_jax.verify import Reference, make_cases


def hf_logits(path, processor, prompts, images):
  reference = Reference(path)
  return [reference.logits(processor, p, imgs) for p, imgs in zip(prompts, images)]


def test_round_trip_hf_flax_hf(tiny_ckpt, tmp_path):
  """HF -> Flax -> exported HF dir -> transformers gives the same logits (<= 1e-5)."""
  exported = save_hf(load_hf(tiny_ckpt), tmp_path / "export", processor_dir=tiny_ckpt)

  # transformers loads it as Qwen2_5_VLForConditionalGeneration with nothing missing or left over.
  _, info = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
    exported, output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info

  processor = Processor(exported)
  prompts, images = make_cases(processor)["padded_batch"]
  before = hf_logits(tiny_ckpt, processor, prompts, images)
  after = hf_logits(exported, processor, prompts, images)
  for a, b in zip(before, after):
    assert np.abs(a - b).max() <= 1e-5
  # Weights survive bit for bit in float32.
  src = safetensors_io.SafetensorsFile(tiny_ckpt / "model.safetensors")
  dst = safetensors_io.SafetensorsFile(exported / "model.safetensors")
  assert sorted(src.keys()) == sorted(dst.keys())
  for key in src.keys():
    np.testing.assert_array_equal(src.get(key), dst.get(key), err_msg=key)


def test_export_copies_processor_files_not_provenance(tiny_ckpt, tmp_path):
  """A bundled checkpoint's training.json describes that checkpoint: an export trained from
  it must not inherit it."""
  src = tmp_path / "src"
  shutil.copytree(tiny_ckpt, src)
  (src / "training.json").write_text('{"command": "python -m train.sft"}')
  exported = save_hf(load_hf(src), tmp_path / "export", processor_dir=src)
  assert (exported / "tokenizer.json").is_file()
  assert not (exported / "training.json").exists()


def test_sharded_checkpoint_in_and_out(tmp_path):
  """A checkpoint split over several files (model.safetensors.index.json) loads to the same
  state, and export can shard too."""
  single = build_tiny_checkpoint(tmp_path / "single", **TINY)
  sharded = build_tiny_checkpoint(tmp_path / "sharded", max_shard_size="200KB", **TINY)
  assert (sharded / "model.safetensors.index.json").is_file()
  a = nnx.to_flat_state(nnx.state(load_hf(single)))
  b = dict(nnx.to_flat_state(nnx.state(load_hf(sharded))))
  for path, var in a:
    np.testing.assert_array_equal(var.get_value(), b[path].get_value(), err_msg=str(path))

  out = save_hf(load_hf(sharded), tmp_path / "export", max_shard_size="100KB")
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  c = dict(nnx.to_flat_state(nnx.state(load_hf(out))))
  for path, var in a:
    np.testing.assert_array_equal(var.get_value(), c[path].get_value(), err_msg=str(path))


def test_failed_export_keeps_the_earlier_one(tmp_path, monkeypatch):
  """An export that dies part way (here: the second shard) leaves the earlier export whole;
  the next export over a sharded one leaves no stale shard or index behind."""
  model = load_hf(build_tiny_checkpoint(tmp_path / "src", **TINY))
  other = load_hf(build_tiny_checkpoint(tmp_path / "other", seed=1, **TINY))  # other weights
  out = save_hf(model, tmp_path / "export", max_shard_size="100KB")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  real_write, calls = safetensors_io.write, []

  def dies_on_second(path, tensors, produce):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("disk full")
    return real_write(path, tensors, produce)

  monkeypatch.setattr(safetensors_io, "write", dies_on_second)
  with pytest.raises(OSError, match="disk full"):
    save_hf(other, out, max_shard_size="100KB")
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  monkeypatch.setattr(safetensors_io, "write", real_write)

  save_hf(model, out)  # one file now: the shards and their index go
  assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
  assert not (out / "model.safetensors.index.json").exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
  a = dict(nnx.to_flat_state(nnx.state(model)))
  for path, var in nnx.to_flat_state(nnx.state(load_hf(out))):
    np.testing.assert_array_equal(var.get_value(), a[path].get_value(), err_msg=str(path))


def test_bf16_checkpoint_loads(tiny_ckpt, tmp_path):
  """Released checkpoints are bfloat16; they load (without torch) into float32 params."""
  hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.bfloat16)
  hf.save_pretrained(tmp_path / "bf16")
  f = safetensors_io.SafetensorsFile(tmp_path / "bf16" / "model.safetensors")
  assert {e["dtype"] for e in f.entries.values()} == {"BF16"}
  loaded = load_hf(tmp_path / "bf16").language_model.layers.self_attn.q_proj.kernel.get_value()[0]
  ref = load_hf(tiny_ckpt).language_model.layers.self_attn.q_proj.kernel.get_value()[0]
  assert loaded.dtype == jnp.float32
  np.testing.assert_allclose(loaded, ref, rtol=1e-2, atol=1e-2)
  assert not np.array_equal(loaded, ref)


# --- errors name the file and the tensor ----------------------------------------------------


def copy_ckpt(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_missing_config(tiny_ckpt, tmp_path):
  d = copy_ckpt(tiny_ckpt, tmp_path / "c")
  (d / "config.json").unlink()
  with pytest.raises(ConfigError, match=r"config\.json.*missing config\.json"):
    load_hf(d)


def test_unsupported_model_type(tiny_ckpt, tmp_path):
  d = copy_ckpt(tiny_ckpt, tmp_path / "c")
  cfg = json.loads((d / "config.json").read_text())
  cfg["model_type"] = "llava"
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConfigError, match=r"config\.json: unsupported model_type 'llava'"):
    load_hf(d)


def rewrite_weights(d, edit):
  """Rewrite model.safetensors through `edit(dict of arrays)`."""
  f = safetensors_io.SafetensorsFile(d / "model.safetensors")
  tensors = {k: np.array(f.get(k)) for k in f.keys()}
  del f
  edit(tensors)
  safetensors_io.write(
    d / "model.safetensors", [(k, v.shape, v.dtype) for k, v in tensors.items()], tensors.__getitem__
  )


def test_wrong_shape_names_tensor_and_file(tiny_ckpt, tmp_path):
  d = copy_ckpt(tiny_ckpt, tmp_path / "c")
  name = "model.layers.1.mlp.up_proj.weight"
  rewrite_weights(d, lambda t: t.__setitem__(name, t[name][:-1]))
  with pytest.raises(CheckpointError) as e:
    load_hf(d)
  msg = str(e.value)
  assert "model.language_model.layers.1.mlp.up_proj.weight" in msg and "model.safetensors" in msg
  assert "(127, 64)" in msg and "(128, 64)" in msg


def test_missing_weight_names_tensor(tiny_ckpt, tmp_path):
  d = copy_ckpt(tiny_ckpt, tmp_path / "c")
  rewrite_weights(d, lambda t: t.pop("visual.blocks.2.attn.qkv.bias"))
  with pytest.raises(
    CheckpointError, match=r"model\.visual\.blocks\.2\.attn\.qkv\.bias: missing weight.*model\.safetensors"
  ):
    load_hf(d)


def test_weights_config_json_does_not_describe_are_an_error(tiny_ckpt, tmp_path):
  """A config.json with fewer layers than the weights would load a different model."""
  d = copy_ckpt(tiny_ckpt, tmp_path / "c")
  config = json.loads((d / "config.json").read_text())
  text = config.get("text_config", config)
  text["num_hidden_layers"] -= 1
  if "layer_types" in text:
    text["layer_types"] = text["layer_types"][:-1]
  (d / "config.json").write_text(json.dumps(config))
  layers = text["num_hidden_layers"]
  for load in (load_hf, check_weights):
    with pytest.raises(CheckpointError) as e:
      load(d)
    assert "checkpoint tensors are not part of the model config.json describes" in str(e.value)
    assert f"model.language_model.layers.{layers}." in str(e.value)
  model = load_hf(d, allow_partial=True)
  assert model.language_model.layers.self_attn.q_proj.kernel.get_value().shape[0] == layers
  check_weights(d, allow_partial=True)
  rewrite_weights(d, lambda t: t.pop("visual.blocks.2.attn.qkv.bias"))
  with pytest.raises(CheckpointError, match="missing weight"):
    check_weights(d, allow_partial=True)  # a missing tensor is never allowed


@pytest.mark.parametrize(
  "damage, words",
  [
    (lambda b: b[: len(b) // 2], "truncated: tensor"),
    (lambda b: b[:5], "not a safetensors file (truncated header)"),
    (lambda b: bytes(range(256)) * 8, "not a safetensors file (header of"),
    (lambda b: b"\x02\x00\x00\x00\x00\x00\x00\x00[]" + b, "header is not a JSON object"),
  ],
)
def test_a_damaged_safetensors_file_is_one_line_naming_it(tiny_ckpt, tmp_path, damage, words):
  """Cut short or random bytes: a sentence naming the file, not a reshape or overflow error."""
  d = copy_ckpt(tiny_ckpt, tmp_path / "c")
  weights = d / "model.safetensors"
  weights.write_bytes(damage(weights.read_bytes()))
  for load in (load_hf, check_weights):
    with pytest.raises(ValueError) as e:
      load(d)
    assert str(weights) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_pickle_weights_are_refused(tiny_ckpt, tmp_path):
  d = copy_ckpt(tiny_ckpt, tmp_path / "c")
  (d / "model.safetensors").rename(d / "pytorch_model.bin")
  with pytest.raises(CheckpointError, match=r"no safetensors weights.*pytorch_model\.bin.*not loaded"):
    load_hf(d)
