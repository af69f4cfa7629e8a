"""The plan compiles what the run runs: every config key that `train.compile` plans with is
one that `train.cdrl` runs with (a setting the plan assumes, such as remat, dtypes,
micro-batches or meshes, can never be silently ignored by the real run), and the plan's train
state and train batch are laid out as the run's are."""

import contextlib
from pathlib import Path

import jax
import ml_collections
import pytest

from catts_jax.aot import plan
from catts_jax.rl import trainer
from catts_jax.rl.batch import batch_shardings
from catts_jax.rl.learner import Learner
from configs import cdrl_tiny

SHARED = Path(__file__).parents[2] / "shared/data/math-vision-testmini"

# Read by the plan only, on purpose.
PLAN_ONLY = {
  "topology",  # the TPU topology compiled for; the real run has its devices
  "model.preset",  # the architecture without weights; the run reads model.ckpt's config.json
}


@contextlib.contextmanager
def recorded_reads(cfg: ml_collections.ConfigDict):
  """The dotted names of `cfg`'s leaves read inside the block (by attribute, [], get, dict()
  or a section's to_dict()), missing ones included; the whole config's to_dict() is a record
  of it (reports, logs), not a use."""
  names = {}

  def index(c, prefix):
    names[id(c)] = prefix
    for key, value in c.items(preserve_field_references=True):
      if isinstance(value, ml_collections.ConfigDict):
        index(value, f"{prefix}{key}.")

  index(cfg, "")
  reads = set()
  getitem, to_dict = ml_collections.ConfigDict.__getitem__, ml_collections.ConfigDict.to_dict

  def leaves(c, prefix):
    for key, value in c.items(preserve_field_references=True):
      if isinstance(value, ml_collections.ConfigDict):
        yield from leaves(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}"

  dumping = []  # inside the whole config's to_dict()

  def read_item(self, key):
    try:
      value = getitem(self, key)
    except KeyError:  # a `get` of a key the config lacks is a read too
      value = None
    if id(self) in names and not dumping and not isinstance(value, ml_collections.ConfigDict):
      reads.add(names[id(self)] + str(key))
    return getitem(self, key) if value is None else value

  def read_all(self, *args, **kwargs):
    if id(self) in names and not names[id(self)]:  # the whole config, its sections included
      dumping.append(True)
      try:
        return to_dict(self, *args, **kwargs)
      finally:
        dumping.pop()
    if id(self) in names and not dumping:  # a section, e.g. loss -> LossConfig
      reads.update(leaves(self, names[id(self)]))
    return to_dict(self, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(ml_collections.ConfigDict, "__getitem__", read_item)
    patch.setattr(ml_collections.ConfigDict, "to_dict", read_all)
    yield reads


def first_call(patch, owner, name: str, box: dict) -> None:
  """Record in box[name] the arguments and result of the first call of `owner.name`."""
  original = getattr(owner, name)

  def spy(*args, **kwargs):
    out = original(*args, **kwargs)
    box.setdefault(name, (args, out))
    return out

  patch.setattr(owner, name, spy)


def specs(tree) -> dict:
  """Each leaf's PartitionSpec by its path (arrays, sharded ShapeDtypeStructs or shardings)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): getattr(x, "sharding", x).spec for p, x in leaves}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")
def test_train_cdrl_runs_what_the_plan_compiles(tiny_ckpt, tmp_path, monkeypatch):
  def config():
    c = cdrl_tiny.get_config()
    c.model.update(ckpt=str(tiny_ckpt), remat=True)
    c.data.update(benchmark="mathvision", manual_dir=str(SHARED), split="testmini", limit=2)
    c.data.data_dir = str(tmp_path / "tfds")
    c.train.update(steps=1, micro_batch=8)
    c.mesh.update(fsdp=-1)  # the 8 simulated devices
    return c

  seen = {}
  first_call(monkeypatch, plan, "abstract_train_state", seen)
  first_call(monkeypatch, plan, "train_batch", seen)  # the train step's (compiled first)
  first_call(monkeypatch, Learner, "step", seen)
  cfg = config()
  with recorded_reads(cfg) as planned:  # the 8 CPU devices, as the run has them
    plan.plan(
      cfg, "v5e:2x4", {"fsdp": -1}, ("generate", "score", "train"), prompt_len=64, image_patches=16, cpu=True
    )
  cfg = config()
  with recorded_reads(cfg) as trained:
    trainer.train(cfg, tmp_path / "run")
  assert {"model.remat", "train.micro_batch", "model.param_dtype"} <= planned
  assert planned - trained - PLAN_ONLY == set()

  planned_state, planned_batch = seen["abstract_train_state"][1], seen["train_batch"][1]
  learner, batch, _ = seen["step"][0]
  assert specs(planned_state.params) == specs(learner.params)
  assert specs(planned_state.opt_state) == specs(learner.opt_state)
  # The same fields, dtypes and ranks (shapes follow the data), laid out alike.
  real = {k: (v.dtype, v.ndim) for k, v in batch.fields().items()}
  assert {k: (v.dtype, v.ndim) for k, v in planned_batch.fields().items()} == real
  assert specs(planned_batch) == specs(batch_shardings(batch, learner.mesh))
