"""CDRL: confidence-driven RL (rewards, GRPO-family objectives, rollouts)."""
