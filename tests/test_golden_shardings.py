"""Golden sharding specs: the PartitionSpec of every param and optimizer-state leaf of the 7B
CDRL config under each hardware preset and named strategy, compared with tests/golden/.

A change to a param's logical axes, to the rules table or to a preset's mesh shows up here as
a named diff. Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest
tests/test_golden_shardings.py` and review the diff of tests/golden/ like code.
"""

import os
import pathlib
import re

import jax
import pytest
from flax import nnx

from catts_jax import sharding
from catts_jax.aot import hardware, state
from catts_jax.models.qwen2_5_vl import Qwen2_5_VL, presets
from catts_jax.rl.learner import OptimizerConfig
from configs import cdrl_qwen2_5_vl

GOLDEN = pathlib.Path(__file__).parent / "golden"
CHIPS = {"gpu-8": 8, "gpu-1": 1, "cpu": 1}
# Every hardware preset of configs/cdrl_qwen2_5_vl.py, and the named strategies on 16 chips.
CASES = {
  name: (mesh, CHIPS.get(name) or hardware.chip_for(cdrl_qwen2_5_vl.TOPOLOGIES[name])[1])
  for name, mesh in cdrl_qwen2_5_vl.MESHES.items()
}
CASES |= {f"{name}-16": (mesh, 16) for name, mesh in cdrl_qwen2_5_vl.STRATEGIES.items()}


@pytest.fixture(scope="module")
def seven_b():
  cfg = cdrl_qwen2_5_vl.get_config("7b,v5e-16")
  model_cfg = presets.resolve(cfg.model)
  model = nnx.eval_shape(lambda: Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(0)))
  return model_cfg, OptimizerConfig(**cfg.optimizer.to_dict()), model


def abstract_mesh(shape, chips):
  sizes = sharding.mesh_sizes(shape, chips)
  return jax.sharding.AbstractMesh(tuple(sizes.values()), tuple(sizes))


def table(seven_b, mesh, rules=None, model=None):
  model_cfg, opt_cfg, abstract = seven_b
  return state.spec_table(
    state.abstract_train_state(model_cfg, opt_cfg, mesh, rules, model=model or abstract)
  )


def read(path: pathlib.Path) -> dict[str, str]:
  out = {}
  for line in path.read_text().splitlines():
    if line and not line.startswith("#"):
      name, _, value = line.partition("  ")
      out[name] = value
  return out


def write(path: pathlib.Path, header: str, entries: dict[str, str]) -> None:
  lines = [f"# {header}", "# path  shape dtype PartitionSpec [xN: layers folded into *]"]
  path.write_text("\n".join(lines + [f"{k}  {v}" for k, v in sorted(entries.items())]) + "\n")


def expand(entries: dict[str, str]) -> dict[str, str]:
  """Unfold `layers/*/...  ... xN` into layers/0 ... layers/N-1, so a diff names the layer."""
  out = {}
  for name, value in entries.items():
    m = re.fullmatch(r"(.*) x(\d+)", value)
    if "/*/" in name and m:
      for i in range(int(m.group(2))):
        out[name.replace("/*/", f"/{i}/", 1)] = m.group(1)
    else:
      out[name] = value
  return out


def diff(golden: dict[str, str], actual: dict[str, str]) -> list[str]:
  golden, actual = expand(golden), expand(actual)
  lines = [
    f"changed {k}: {golden[k]} -> {actual[k]}"
    for k in sorted(golden)
    if k in actual and golden[k] != actual[k]
  ]
  lines += [f"missing {k}: {golden[k]}" for k in sorted(set(golden) - set(actual))]
  lines += [f"unexpected {k}: {actual[k]}" for k in sorted(set(actual) - set(golden))]
  return lines


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_shardings(case, seven_b):
  shape, chips = CASES[case]
  mesh = abstract_mesh(shape, chips)
  actual = table(seven_b, mesh)
  path = GOLDEN / f"shardings_7b_{case}.txt"
  if os.environ.get("UPDATE_GOLDEN"):
    GOLDEN.mkdir(exist_ok=True)
    write(
      path, f"7B CDRL params + AdamW state, preset {case}: {chips} chips, mesh {dict(mesh.shape)}", actual
    )
  assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
  problems = diff(read(path), actual)
  assert not problems, f"{len(problems)} sharding differences from {path.name}:\n" + "\n".join(problems[:40])


def test_golden_detects_changed_logical_axes(seven_b):
  """The decoder layers' MLP kernel loses its 'embed' axis: the diff names that param and its
  two Adam moments, and nothing else."""
  kernel = seven_b[2].language_model.layers.mlp.up_proj.kernel
  axes = kernel.get_metadata()["logical_axes"]
  kernel.set_metadata("logical_axes", ("layers", None, "mlp"))
  try:
    shape, chips = CASES["v5e-16"]
    golden = read(GOLDEN / "shardings_7b_v5e-16.txt")
    problems = diff(golden, table(seven_b, abstract_mesh(shape, chips)))
  finally:
    kernel.set_metadata("logical_axes", axes)
  assert len(problems) == 3, problems
  assert all("language_model/layers/mlp/up_proj/kernel" in p for p in problems)
  assert any(
    p.startswith("changed params/")
    and "P(None, 'fsdp', 'tensor') -> (28, 3584, 18944) float32 P(None, None, 'tensor')" in p
    for p in problems
  )


def test_golden_detects_changed_rules(seven_b):
  """A rules table that stops sharding the MLP hidden dim changes every MLP kernel."""
  rules = dict(sharding.DEFAULT_RULES, mlp=None)
  shape, chips = CASES["v5e-16"]
  problems = diff(
    read(GOLDEN / "shardings_7b_v5e-16.txt"), table(seven_b, abstract_mesh(shape, chips), rules)
  )
  changed = {p.split(":")[0] for p in problems}
  assert "changed params/language_model/layers/mlp/down_proj/kernel" in changed
  assert "changed opt_state/1/0/mu/visual/blocks/mlp/gate_proj/kernel" in changed
  # ... and only params with an "mlp" logical axis: MLPs and the vision patch merger.
  assert all(re.search(r"/(mlp|merger)/", p) for p in changed), changed
