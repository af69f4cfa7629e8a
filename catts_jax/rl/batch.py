"""The train step's batch: the model inputs of a scoring batch plus the RL fields, one typed
pytree (`flax.struct.dataclass`) instead of a dict of optional keys.

B rows, T tokens a row, R response tokens (the last R of each row), I image slots of S
patches each: one per distinct image, shared by the rows that show it (`processing`).
Optional fields are None when a run does not use them; None is an empty subtree, so a batch
without them is a different (but fixed) pytree structure for `jax.jit`.

A dict of (abstract) arrays named like the fields becomes a batch with `TrainBatch(**d)`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import struct
from jax.sharding import Mesh

from catts_jax import sharding
from catts_jax.processing import MODEL_INPUT_KEYS

Array = jax.Array | np.ndarray | jax.ShapeDtypeStruct


@struct.dataclass
class TrainBatch:
  """One train step's rows.

  Model inputs (processing.Batch.model_inputs):
    input_ids [B, T] int32, left-padded; positions [3, B, T] int32 (M-RoPE);
    attention_mask [B, T] int32; with images pixel_values [I, S, C*t*p*p] float32,
    patch_pos [I, S, 2] int32, patch_image [I, S] int32 (-1 for padding), image_index
    [B, T] int32 (the merged vision feature each image token reads, 0 elsewhere).
  Loss fields:
    response_mask [B, R] float32: 1 on the response tokens that count (0 on padding rows);
    old_logp [B, R]: the sampler's log-probs of those tokens (the ratio's denominator);
    ref_logp [B, R]: the frozen reference's (the KL term);
    advantages [B]: one per row;
    token_advantages [B, R]: added to the row's advantage token by token;
    kl_rows [B]: 1 on the rows the KL is estimated on (the policy's own samples);
    sft_rows [B]: 1 on reference-solution rows (the NLL anchor only).
  """

  input_ids: Array
  positions: Array
  attention_mask: Array
  response_mask: Array
  pixel_values: Array | None = None
  patch_pos: Array | None = None
  patch_image: Array | None = None
  image_index: Array | None = None
  old_logp: Array | None = None
  ref_logp: Array | None = None
  advantages: Array | None = None
  token_advantages: Array | None = None
  kl_rows: Array | None = None
  sft_rows: Array | None = None

  def model_inputs(self) -> dict[str, Array]:
    """The keyword arguments of the model (`Qwen2_5_VL.hidden_states`)."""
    return {k: getattr(self, k) for k in MODEL_INPUT_KEYS if getattr(self, k) is not None}

  def fields(self) -> dict[str, Array]:
    """The fields that are set, by name."""
    return {
      f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None
    }


def batch_shardings(batch: TrainBatch, mesh: Mesh) -> TrainBatch:
  """Each field's NamedSharding, as a TrainBatch (None where the field is None), laid out as
  every model input is (`sharding.input_shardings`): rows and image slots over data x fsdp
  (where they divide), scalars replicated. `batch` may hold arrays or ShapeDtypeStructs."""
  return batch.replace(**sharding.input_shardings(batch.fields(), mesh))
