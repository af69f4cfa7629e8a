"""catts-jax: confidence-calibrated multimodal reasoning (CDRL + CA-TTS) in JAX/Flax."""

__version__ = "0.1.0"
