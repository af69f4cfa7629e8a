"""CA-TTS: confidence-aware test-time scaling (Self-Consistency with an Expert as Voter,
Self-Reflection, Visual Self-Check) writing into one vote table, and the DeepConf baselines.

voting.py and deepconf.py hold the pure decision logic (numpy, no model); the Expert, the
Planner and the pipeline that samples and scores build on them.
"""
