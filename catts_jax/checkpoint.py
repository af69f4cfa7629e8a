"""Training checkpoints with orbax: everything needed to resume a run exactly.

A checkpoint holds the params, the optimizer state and a small JSON record (step, PRNG key
data, data position, anything else the trainer wants). Saves are asynchronous and keep the
newest `keep` checkpoints. orbax writes each checkpoint under a temporary name and renames
it only when complete, so a run killed mid-save leaves no checkpoint that `restore` would
pick; restoring reads the latest complete step into the shardings of the given templates,
after checking that the checkpoint's params have the templates' names and shapes (a
checkpoint of another layout, e.g. per-layer params from before layers were stacked, is
refused with a message naming the difference).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointLayoutError(ValueError):
  """A checkpoint whose params are laid out differently from the model resuming from it."""


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """'language_model/layers/mlp/up_proj/kernel/value' -> shape, for every leaf of a param tree
  or of orbax's metadata of one."""

  def key(k) -> str:
    return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(key(k) for k in path): tuple(x.shape) for path, x in leaves}


def _layout_difference(saved: dict, wanted: dict) -> str:
  only_saved = sorted(set(saved) - set(wanted))
  only_wanted = sorted(set(wanted) - set(saved))
  reshaped = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  parts = []
  if only_saved:
    parts.append(
      f"it has {only_saved[0]} {saved[only_saved[0]]} (and {len(only_saved) - 1} more) that the model lacks"
    )
  if only_wanted:
    name = only_wanted[0]
    parts.append(f"the model has {name} {wanted[name]} (and {len(only_wanted) - 1} more) that it lacks")
  if reshaped:
    parts.append(f"{reshaped[0]} is {saved[reshaped[0]]} there but {wanted[reshaped[0]]} here")
  return "; ".join(parts)


class Checkpointer:
  def __init__(
    self, directory: str | pathlib.Path, *, keep: int = 3, every: int = 1, async_save: bool = True
  ):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=every, enable_async_checkpointing=async_save, create=True
    )
    # Handlers named up front, so that a fresh process can read a checkpoint's metadata
    # before restoring it.
    handlers = dict(
      params=ocp.StandardCheckpointHandler(),
      opt_state=ocp.StandardCheckpointHandler(),
      record=ocp.JsonCheckpointHandler(),
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params, opt_state, record: dict[str, Any], *, force: bool = False) -> bool:
    """Start saving (returns at once when async); False if `step` is not a save step."""
    return self.manager.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        record=ocp.args.JsonSave(record),
      ),
      force=force,
    )

  def restore(self, params_template, opt_state_template, step: int | None = None):
    """(params, opt_state, record) of `step` (default: latest), placed like the templates
    (arrays or ShapeDtypeStructs with shardings). None if there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None

    saved = _shapes(self.manager.item_metadata(step)["params"].tree)
    wanted = _shapes(params_template)
    if saved != wanted:
      stacked = " (decoder layers and vision blocks are now stacked on a leading 'layers' axis)"
      per_layer = any("/layers/0/" in name or "/blocks/0/" in name for name in saved)
      raise CheckpointLayoutError(
        f"{self.directory / str(step)}: params laid out differently from this model: "
        f"{_layout_difference(saved, wanted)}{stacked if per_layer else ''}; resume with the "
        "version that wrote it, or export the policy there (save_hf) and start from the export"
      )

    def abstract(tree):
      return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)

    out = self.manager.restore(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(params_template)),
        opt_state=ocp.args.StandardRestore(abstract(opt_state_template)),
        record=ocp.args.JsonRestore(),
      ),
    )
    return out["params"], out["opt_state"], out["record"]

  def wait(self) -> None:
    """Block until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
