"""What the trainer compiles for: bucketed train and decode sizes (`Shapes`), the train batch
as sharded `jax.ShapeDtypeStruct`s, and the model FLOPs of one train step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from catts_jax import roofline
from catts_jax.processing import bucket, power_of_two_buckets, text_buckets
from catts_jax.rl.batch import TrainBatch, batch_shardings


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What the trainer would compile for: real and bucketed sizes. A problem's G samples share
  its prompt and image (`processing`: one slot per distinct image), so the train batch holds
  one image slot a prompt, not a row: the vision tower's work does not grow with G."""

  prompts: int
  group: int
  rows: int  # train rows: prompts x group, bucketed
  response_len: int  # bucketed
  seq_len: int  # prompt + response, bucketed
  images: int  # image slots: one image per prompt (shared by its group's rows), bucketed (0: text only)
  patches: int  # all slots' patches: images x image_patches
  prompt_rows: int  # decode: prompts, bucketed
  prompt_len: int  # decode: prompt tokens, bucketed
  max_new_tokens: int
  image_patches: int


def trainer_shapes(
  model_cfg,
  prompts: int,
  group: int,
  max_new_tokens: int,
  prompt_len: int,
  image_patches: int,
  buckets_per_octave: int = 1,
):
  seq_buckets, response_buckets = text_buckets(model_cfg.text.max_position_embeddings, buckets_per_octave)
  row_buckets = power_of_two_buckets(1, 1 << 16)
  image_tokens = image_patches // model_cfg.vision.spatial_merge_size**2
  if image_tokens + 1 > prompt_len:
    raise ValueError(
      f"--prompt_len {prompt_len} cannot hold a {image_patches}-patch image ({image_tokens} tokens)"
    )
  response = bucket(max_new_tokens, response_buckets, "response length")
  images = bucket(prompts, row_buckets, "images") if image_patches else 0
  merge_block = model_cfg.vision.spatial_merge_size**2
  if image_patches % merge_block:
    raise ValueError(f"--image_patches {image_patches}: expected a multiple of {merge_block}")
  return Shapes(
    prompts=prompts,
    group=group,
    rows=bucket(prompts * group, row_buckets, "rows"),
    response_len=response,
    seq_len=bucket(prompt_len + response, seq_buckets, "sequence length"),
    images=images,
    patches=images * image_patches,
    prompt_rows=bucket(prompts, row_buckets, "prompt rows"),
    prompt_len=bucket(prompt_len, seq_buckets, "prompt length"),
    max_new_tokens=max_new_tokens,
    image_patches=image_patches,
  )


def train_batch(model_cfg, shapes: Shapes, mesh=None, solution_rows: bool = False) -> TrainBatch:
  """The train step's batch as ShapeDtypeStructs (sharded as the Learner shards it);
  `solution_rows`: with the row marks of the reference-solution anchor (`loss.sft_coef`)."""
  b, t, r = shapes.rows, shapes.seq_len, shapes.response_len
  i, p = shapes.images, shapes.image_patches
  batch = dict(
    input_ids=((b, t), jnp.int32),
    positions=((3, b, t), jnp.int32),
    attention_mask=((b, t), jnp.int32),
    old_logp=((b, r), jnp.float32),
    ref_logp=((b, r), jnp.float32),
    response_mask=((b, r), jnp.float32),
    advantages=((b,), jnp.float32),
  )
  if solution_rows:
    batch["sft_rows"] = ((b,), jnp.float32)
  if i:
    batch.update(
      pixel_values=((i, p, model_cfg.vision.patch_dim), jnp.float32),
      patch_pos=((i, p, 2), jnp.int32),
      patch_image=((i, p), jnp.int32),
      image_index=((b, t), jnp.int32),
    )
  batch = TrainBatch(**{k: jax.ShapeDtypeStruct(*v) for k, v in batch.items()})
  if mesh is None:
    return batch
  sh = batch_shardings(batch, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), batch, sh)


def analytic_train_flops(model_cfg, shapes: Shapes) -> float:
  """Model FLOPs of one train step (forward + backward = 3 forwards; remat's recompute is not
  model work): the text model over every row and token (LM head on the response positions
  only), and the vision tower over every image slot's patches (one slot a prompt, shared by
  its group's rows)."""
  tokens = shapes.rows * shapes.seq_len
  fwd = roofline.text_flops(model_cfg, tokens, (shapes.seq_len + 1) / 2, shapes.rows * shapes.response_len)
  if shapes.patches:
    v = model_cfg.vision
    per_image = roofline.vision_flops(
      model_cfg, shapes.image_patches, min(shapes.image_patches, v.window_patches**2)
    )
    fwd += per_image * shapes.images
  return 3 * fwd
