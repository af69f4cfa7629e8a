"""The Voter's raw replies on the first validation problems with two or more candidates (the
evaluation's requests: the policy's first 8 samples), to read what a trained Expert writes.

python docs/experiments/voter_replies.py RUN_DIR [K] > OUT.txt   # RUN_DIR: a train.expert run
"""

import dataclasses
import json
import pathlib
import sys

from catts_jax import data
from catts_jax.rl import expert_eval
from catts_jax.rl.expert_sft import load_policy
from catts_jax.tts.self_expert import SelfExpert
from configs import synthetic_expert


def main(run: pathlib.Path, k: int) -> None:
  cfg = synthetic_expert.get_config()
  val = data.load("synthetic", config="reasoning", split="validation")[:k]
  samples = {}
  for line in (run / "val_samples.jsonl").read_text().splitlines():
    row = json.loads(line)
    samples[row["index"]] = row
  items = [it for it in expert_eval.requests(val, samples, cfg.eval) if len(it["candidates"]) > 1]
  expert = SelfExpert(load_policy(run / "final"), batch=cfg.eval.batch)
  raw = [dataclasses.replace(it["asks"]["voter"], read=lambda _, text, call: (text, call)) for it in items]
  for it, (text, _) in zip(items, expert.ask_many(raw)):
    print(f"{it['id']} {it['task']} candidates {it['candidates']} truth {it['truth']} answer {it['answer']}")
    print(f"    {text}")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 64)
