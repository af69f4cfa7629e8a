"""Devices to compile for: a TPU topology's compile-only devices (libtpu, no TPU needed) or
simulated CPU devices, and the mesh over them."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from catts_jax import sharding
from catts_jax.aot.hardware import chip_for


def ensure_cpu_devices(n: int) -> None:
  """Give the CPU fallback n devices (only effective before jax starts its CPU backend)."""
  flag = "--xla_force_host_platform_device_count"
  if flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={n}".strip()


def topology_devices(topology: str, cpu: bool = False):
  """(devices, backend description). TPU compile-only devices when libtpu is present,
  otherwise the first N (simulated) CPU devices."""
  chip, n = chip_for(topology)
  reason = "--cpu given"
  if not cpu:
    if importlib.util.find_spec("libtpu") is None:
      reason = "libtpu is not installed (pip install -e '.[tpu]')"
    else:
      from jax.experimental import topologies

      # Compile-only use: let several processes (a sweep, a test run) load libtpu at once.
      os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
      try:
        desc = topologies.get_topology_desc(
          platform="tpu", topology_name=topology, chip_config_name="megacore" if chip.megacore else "default"
        )
        return list(desc.devices), f"tpu ({chip.name}, libtpu compile-only devices)"
      except Exception as e:  # noqa: BLE001 - any libtpu failure means: fall back
        reason = f"libtpu could not describe {topology}: {str(e).splitlines()[0][:200]}"
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise RuntimeError(
      f"{reason}; the CPU fallback needs {n} devices but has {len(devices)}: start with "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={n}"
    )
  return devices[:n], f"cpu-simulated ({reason}; CPU compiler figures, not TPU ones)"


def build_mesh(shape: Mapping[str, int], devices, tpu: bool) -> Mesh:
  """The mesh of `shape` (-1: the devices left over) over `devices`; on TPUs in physical (ICI)
  order, as on a real slice."""
  sizes = sharding.mesh_sizes(shape, len(devices))
  mesh = sharding.make_mesh(sizes, devices)
  if tpu:
    try:
      order = mesh_utils.create_device_mesh(
        tuple(sizes.values()), devices=devices, allow_split_physical_axes=True
      )
      mesh = Mesh(order, sharding.MESH_AXES)
    except Exception:  # noqa: BLE001 - keep the plain order
      pass
  return mesh
