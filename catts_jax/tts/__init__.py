"""CA-TTS: confidence-aware test-time scaling (Self-Consistency with an Expert as Voter,
Self-Reflection, Visual Self-Check) writing into one vote table, and the DeepConf baselines.

voting.py and deepconf.py hold the pure decision logic (numpy, no model); expert.py is the
Expert's client and planner.py / voter.py / critic.py its roles; context.py holds one problem's
data, policy_ops.py what is asked of the policy, methods.py CA-TTS and the baselines on one
problem, runner.py the resumable run over a benchmark, replies.py the lenient parsing of
the Expert's JSON, run.py a benchmark run into an output directory and summary.py its report.
"""
