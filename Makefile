# `make test` builds .venv from nothing (python3 -m venv + pip) and runs the test-suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install test lint demo demo-readme checkpoints verify catts ablation plan train-bench gpu-wheels gpu-check gpu-catts bench bench-decode bench-readme clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Two workers (the suite is mostly single-threaded XLA compiles), each taking tests as it frees up.
test: install
	$(PY) -m pytest -q -n 2 --dist worksteal

lint: install
	$(VENV)/bin/ruff check .

# The first command: calibration before/after CDRL and CA-TTS scaling of the bundled tiny
# checkpoints on the synthetic test split, and Math-Vision testmini end to end (CPU, minutes).
demo: install
	$(PY) -m infer.demo --out $(or $(OUT),runs/demo)

# docs/results.md's demo block, from the committed run (make demo OUT=docs/reports/demo first).
demo-readme: install
	$(PY) -m infer.demo --out docs/reports/demo --render_readme docs/results.md

# Rebuild checkpoints/synthetic_{sft,cdrl,expert} from scratch (seeded SFT, CDRL, then the Expert).
checkpoints: install
	$(PY) -m train.bundle --runs runs --dest checkpoints

# Compare the Flax port with transformers on a downloaded checkpoint: make verify HF=/path/to/Qwen2.5-VL-7B-Instruct
verify: install
	@test -n "$(HF)" || { echo "usage: make verify HF=/path/to/hf/checkpoint"; exit 2; }
	$(PY) -m catts_jax.verify --hf $(HF)

# CA-TTS and its baselines on Math-Vision testmini: make catts CKPT=/path/to/hf/checkpoint [EXPERT=self]
catts: install
	@test -n "$(CKPT)" || { echo "usage: make catts CKPT=/path/to/hf/checkpoint [EXPERT=self|none|hf:<id>|http://host:port/v1]"; exit 2; }
	$(PY) -m infer.catts --ckpt $(CKPT) --benchmark mathvision --data ../shared/data/math-vision-testmini --expert $(or $(EXPERT),self) --out runs/catts

# The CDRL learning check and ablation on the toy colour task, two seeds (CPU, minutes); rewrites docs/results.md's tables.
ablation: install
	$(PY) -m train.ablation --config configs/ablation_colour.py --out docs/reports/ablation_colour
	$(PY) -m train.ablation --out docs/reports/ablation_colour --render_readme docs/results.md
	$(PY) -m train.ablation --config configs/ablation_colour.py --config.rl.train.seed=1 --out docs/reports/ablation_colour_seed1
	$(PY) -m train.ablation --out docs/reports/ablation_colour_seed1 --render_readme docs/results.md --readme_block ablation-table-seed1

# AOT sharding plans for TPU topologies (libtpu, no TPU): resumable sweep, rewrites docs/sharding.md's table
plan: install
	$(PY) -m pip install --quiet -e ".[tpu]"
	$(PY) -m train.sweep --out docs/reports/compile_sweep --render_readme docs/sharding.md

# CDRL train-step time and MFU on this machine (the small random-weight preset)
train-bench: install
	$(PY) -m train.bench --config configs/cdrl_qwen2_5_vl.py:small,cpu --config.model.dtype=float32 --out docs/reports/train_bench_cpu

# GPU checks for a lent device (one H100/H200, no network there): `make gpu-wheels` here, then
# carry .gpu-wheels and run `make gpu-check` there, with the device's own jax: the 1.5B shape in
# bf16, train-step MFU and rollout tokens/s -> docs/reports/gpu_1p5b_{train,rollout}/report.json
GPU_WHEELS := .gpu-wheels
GPU_DEPS := "ml-collections>=1.1,<2" "optax>=0.2.8,<0.3" "flax>=0.12.8,<0.13" absl-py pillow safetensors tqdm
gpu-wheels: install
	$(PY) -m pip download --quiet --dest $(GPU_WHEELS) $(GPU_DEPS)

gpu-check:
	python3 -m pip install --quiet --no-index --find-links $(GPU_WHEELS) $(GPU_DEPS)
	PYTHONPATH=. python3 -m train.bench --device gpu --config configs/cdrl_qwen2_5_vl.py:1.5b,gpu-1 \
	  --rows 16 --prompt_len 512 --response_len 512 --out docs/reports/gpu_1p5b_train
	PYTHONPATH=. python3 -m train.bench --part rollout --device gpu --config configs/cdrl_qwen2_5_vl.py:1.5b,gpu-1 \
	  --rows 128 --prompt_len 512 --response_len 256 --out docs/reports/gpu_1p5b_rollout

# CA-TTS end to end on a 1.5B-shaped random-weight policy in bf16 (cold and warm, serial against
# batched): needs the device's torch plus transformers and tensorflow-datasets (too large to
# carry); not yet run on a device.
gpu-catts:
	PYTHONPATH=. python3 -m infer.bench --catts --shape 1.5b --max_new_tokens 512 --out docs/reports/gpu_1p5b_catts

# Scoring/generation throughput against transformers on this machine (docs/reports/bench_cpu/report.json);
# bench-readme rewrites docs/results.md's tables from the committed report.json files.
bench: install
	$(PY) -m infer.bench --out docs/reports/bench_cpu

# Decode at batch 32 and 128 with 512-token responses (docs/reports/bench_cpu_decode512).
bench-decode: install
	$(PY) -m infer.bench --gen_batches 32,128 --new_tokens 512 --repeats 3 --out docs/reports/bench_cpu_decode512

bench-readme: install
	$(PY) -m infer.bench --render_readme docs/results.md --reports docs/reports/bench_cpu/report.json,docs/reports/bench_cpu_decode512/report.json,docs/reports/bench_gpu_h100/report.json

clean:
	rm -rf $(VENV) .pytest_cache
