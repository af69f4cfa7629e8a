"""One hardware table: TPU chips (HBM, peak bf16 FLOP/s, bandwidth) by topology name, and the
nominal dense peaks of GPUs by device kind. Pure data: importing it does not start jax."""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation. `hbm_gib` is what XLA may allocate (its compile-time OOM message
  quotes it), a little under the nominal size."""

  name: str
  hbm_gib: float
  nominal_hbm_gib: int
  bf16_tflops: float
  hbm_tbs: float
  megacore: bool  # one JAX device per chip for two TensorCores


CHIPS = {
  "v4": Chip("TPU v4", 30.75, 32, 275, 1.2, True),
  "v5e": Chip("TPU v5e", 15.75, 16, 197, 0.82, False),
  "v5p": Chip("TPU v5p", 95.73, 95, 459, 2.76, True),
  "v6e": Chip("TPU v6e", 31.24, 32, 918, 1.64, False),
}

# Nominal dense peak FLOP/s by compute dtype, for device kinds that contain the key.
PEAK_FLOPS = {
  "H100": {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 494.7e12},  # SXM; fp32 as TF32
  "H200": {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 494.7e12},
  "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
}


def chip_for(topology: str) -> tuple[Chip, int]:
  """'v5e:4x4' -> (the v5e chip, 16 chips)."""
  generation, _, dims = topology.partition(":")
  if generation not in CHIPS or not re.fullmatch(r"\d+(x\d+)*", dims):
    raise ValueError(f"topology {topology!r}: expected <{'|'.join(CHIPS)}>:AxB[xC], e.g. v5e:4x4")
  return CHIPS[generation], math.prod(int(d) for d in dims.split("x"))


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The nominal dense peak FLOP/s of a device kind (e.g. 'NVIDIA H100 80GB HBM3') for a
  compute dtype, or None where unknown (CPUs)."""
  return next((p.get(dtype) for k, p in PEAK_FLOPS.items() if k in device_kind), None)
