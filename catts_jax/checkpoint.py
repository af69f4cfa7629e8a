"""Training checkpoints with orbax: everything needed to resume a run exactly.

A checkpoint holds the params, the optimizer state and a small JSON record (step, PRNG key
data, data position, anything else the trainer wants). Saves are asynchronous and keep the
newest `keep` checkpoints. orbax writes each checkpoint under a temporary name and renames
it only when complete, so a run killed mid-save leaves no checkpoint that `restore` would
pick; restoring reads the latest complete step into the shardings of the given templates.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(
    self, directory: str | pathlib.Path, *, keep: int = 3, every: int = 1, async_save: bool = True
  ):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=every, enable_async_checkpointing=async_save, create=True
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

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
