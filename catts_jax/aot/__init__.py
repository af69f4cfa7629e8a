"""Ahead-of-time plans: will a CDRL step fit a topology, and what does it cost?

Plans create no weights: abstract state and batches (`state`, `shapes`) are lowered with the
real train step and decode loop and compiled for a topology's devices (`devices`,
`hardware`); `hlo` reads collectives and out-of-memory errors, `plan` returns the report,
`sweep` runs a grid of plans through a program the caller names. `measure` times the real
train step on random weights (the train-step benchmark). Import the submodules (this package imports nothing, so the
hardware table is usable before jax starts).
"""
