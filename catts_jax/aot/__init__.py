"""Ahead-of-time plans: will a CDRL step fit a topology, and what does it cost?

No weights are created: abstract state and batches (`state`, `shapes`) are lowered with the
real train step and decode loop and compiled for a TPU topology's devices (`devices`,
`hardware`); `hlo` reads collectives and out-of-memory errors, `plan` writes the report,
`sweep` runs a grid of plans. Import the submodules (this package imports nothing, so the
hardware table is usable before jax starts).
"""
