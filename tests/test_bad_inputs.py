"""Bad input, one parametrized row per case, so that a regression names its case.

Each row: the case's name, the call (an entry point's `main([...])` in this process, or a
library function), the exit code or exception it must end with, the words its one-line message
must hold, and the files of an earlier good run in --out that must stay byte-identical. The
cases: an --out held by another process (the second run fails at once, naming the holder's
pid, for every entry point that writes a run directory), an --out that is read-only or cannot
be created, a predictions file that breaks the format (a byte that is not UTF-8, not JSON,
`{}`, no id, a duplicate id, a confidence of true / 1.5 / "x" / NaN), a failure while the
outputs are being written, and a data folder edited after its first build. Training: a setting
out of range (learning rate, steps, batch size, group size, data limit), a step's rows or a
micro-batch that do not split over the mesh's data x fsdp devices (the suite's 8 simulated
devices), and a resume whose config differs from the one its run.json recorded: each one line
naming the setting, exit 2, before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest
from fixtures import releases

from catts_jax import data
from catts_jax.eval import report
from catts_jax.rl.validate import ConfigError
from infer import evaluate

ROOT = pathlib.Path(__file__).parents[1]
KEPT = ("graded.jsonl", "report.json", "report.md", "reliability.png")  # an earlier good run's files
GOOD = [
  {"id": "q1", "response": "The answer is B", "confidence": 0.9},
  {"id": "q2", "response": "\\boxed{3}", "confidence": 0.4},
]


def jsonl(rows) -> bytes:
  return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A small jsonl benchmark (split train: q1 B, q2 3, q3 0.5) and its built cache."""
  root = releases.write_jsonl(tmp_path_factory.mktemp("release") / "mine")
  tfds_dir = tmp_path_factory.mktemp("tfds")
  data.load("jsonl", manual_dir=root, data_dir=tfds_dir, split="train")
  return root, tfds_dir


@pytest.fixture(scope="module")
def good_run(release, tmp_path_factory):
  """An --out holding a good evaluation (graded.jsonl, report.json, report.md, reliability.png)."""
  root, tfds_dir = release
  tmp = tmp_path_factory.mktemp("good")
  (tmp / "preds.jsonl").write_bytes(jsonl(GOOD))
  out = tmp / "out"
  argv = ["--benchmark", "jsonl", "--data", str(root), "--data_dir", str(tfds_dir), "--split", "train"]
  assert evaluate.main([*argv, "--predictions", str(tmp / "preds.jsonl"), "--out", str(out)]) == 0
  assert all((out / name).is_file() for name in KEPT)
  return out


@contextlib.contextmanager
def held_by_another_process(out: pathlib.Path):
  """Another process holding `out` (runs.locked) until the block ends; yields its pid."""
  code = "import sys\nfrom catts_jax import runs\nwith runs.locked(sys.argv[1]):\n  print('held', flush=True)\n  sys.stdin.read()"
  proc = subprocess.Popen(
    [sys.executable, "-c", code, str(out)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
  )
  try:
    assert proc.stdout.readline().strip() == "held"
    yield proc.pid
  finally:
    proc.stdin.close()
    proc.wait(timeout=30)


def unwritable_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  """An existing directory this process cannot write: a read-only folder, or for root (who
  writes any folder) one of sysfs, which takes no new files."""
  if os.geteuid() != 0:
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    return ro
  for candidate in (pathlib.Path("/sys/kernel"), pathlib.Path("/sys")):
    try:
      (candidate / ".lock").open("a").close()
    except OSError:
      return candidate
  pytest.skip("no directory that root cannot write")


@dataclasses.dataclass
class Ctx:
  """What a row's call gets: the release, an --out holding a good run, a predictions path."""

  root: pathlib.Path
  tfds_dir: pathlib.Path
  out: pathlib.Path
  preds: pathlib.Path
  tmp: pathlib.Path
  ckpt: pathlib.Path  # a tiny HF checkpoint (conftest's tiny_ckpt); rows edit copies of it

  def catts(self, *extra: str, ckpt: pathlib.Path | None = None) -> int:
    """infer.catts on the release (greedy and majority, N = 1), its exit status (a flag
    error's SystemExit too)."""
    from infer import catts

    argv = ["--ckpt", str(ckpt or self.ckpt), "--benchmark", "jsonl", "--data", str(self.root)]
    argv += ["--data_dir", str(self.tfds_dir), "--split", "train", "--n", "1", "--methods", "majority,greedy"]
    try:
      return catts.main([*argv, "--out", str(self.out), *extra])
    except SystemExit as e:
      return e.code

  def evaluate(self, *extra: str, out: pathlib.Path | None = None, root: pathlib.Path | None = None) -> int:
    argv = ["--benchmark", "jsonl", "--data", str(root or self.root), "--data_dir", str(self.tfds_dir)]
    argv += ["--split", "train", "--predictions", str(self.preds), "--out", str(out or self.out), *extra]
    return evaluate.main(argv)


@dataclasses.dataclass
class Case:
  name: str
  call: Callable[[Ctx], int]
  code: int | type[BaseException] = 2
  # In the message (stderr's last line, or the exception): "{pid}", "{out}", "{preds}" filled in.
  words: tuple[str, ...] = ()
  preds: bytes = jsonl(GOOD)
  held: bool = False  # another process holds --out during the call
  kept: tuple[str, ...] = KEPT  # files of the earlier run that stay byte-identical
  stdout: tuple[str, ...] = ()  # words on stdout
  setup: Callable[[Ctx, pytest.MonkeyPatch], None] | None = None


# The held cases name a checkpoint that does not exist (or a one-second compile timeout): past
# the lock they would fail at once, never train.


def _train_main(module: str, config: str, ckpt_key: str, *extra: str) -> Callable[[Ctx], int]:
  def call(ctx: Ctx) -> int:
    import importlib

    argv = [
      "--config",
      str(ROOT / config),
      f"--config.{ckpt_key}={ctx.tmp / 'no_ckpt'}",
      *extra,
      "--out",
      str(ctx.out),
    ]
    return importlib.import_module(module).main(argv)

  return call


# train.cdrl's tiny config on the suite's 8 devices (its mesh of 1 x 1 x 1 fits one).
CDRL = ("train.cdrl", "configs/cdrl_tiny.py", "model.ckpt", "--config.mesh.fsdp=-1")
SFT = ("train.sft", "configs/synthetic_tiny.py", "model.ckpt")


def _cdrl(*extra: str) -> Callable[[Ctx], int]:
  return _train_main(*CDRL, *extra)


def _sft(*extra: str) -> Callable[[Ctx], int]:
  return _train_main(*SFT, *extra)


def _sft_on_a_mesh(ctx: Ctx) -> int:
  """sft.train with a mesh of 8 data-parallel devices and 12 rows a step."""
  from catts_jax.rl import sft
  from configs import synthetic_tiny

  cfg = synthetic_tiny.get_config("colour")
  cfg.mesh = dict(data=8, fsdp=1, tensor=1)
  cfg.train.batch_size = 12
  return sft.train(cfg, ctx.out)


def _resumable(kind: str) -> Callable[[Ctx, pytest.MonkeyPatch], None]:
  """An --out holding a `kind` run ("cdrl" or "sft") of the row's base config (CDRL or SFT, as
  its argv gives it) stopped at step 3: its run.json, a checkpoint of step 3, train.jsonl.
  Finding or loading the model fails the row: the resume is refused before any work."""

  def setup(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    from catts_jax.checkpoint import Checkpointer
    from catts_jax.rl import sft, trainer, validate
    from configs import cdrl_tiny, synthetic_tiny

    def work(*args, **kwargs):
      raise AssertionError("work started before the resume was checked")

    monkeypatch.setattr(sft, "model_dir", work)
    monkeypatch.setattr(trainer, "load_hf", work)

    cfg = cdrl_tiny.get_config() if kind == "cdrl" else synthetic_tiny.get_config()
    cfg.model.ckpt = str(ctx.tmp / "no_ckpt")
    if kind == "cdrl":
      cfg.mesh.fsdp = -1
    validate.record_run(ctx.out, validate.settings(cfg), 0, {})
    checkpoints = Checkpointer(ctx.out / "checkpoints", async_save=False)
    zeros = {"w": np.zeros(2, np.float32)}
    checkpoints.save(3, zeros, zeros, {"step": 3}, force=True)
    checkpoints.close()
    (ctx.out / "train.jsonl").write_bytes(jsonl({"step": i, "loss": 1.0 / i} for i in (1, 2, 3)))

  return setup


RESUMED = KEPT + ("run.json", "train.jsonl")


def _probe(ctx: Ctx) -> int:
  from infer import probe

  argv = ["--ckpt", str(ctx.tmp / "no_ckpt"), "--benchmark", "jsonl", "--data", str(ctx.root)]
  return probe.main([*argv, "--split", "train", "--out", str(ctx.out)])


def _sweep(ctx: Ctx) -> int:
  from train import sweep

  argv = ["--models", "3b", "--topologies", "v4:2x2x1", "--strategies", "dp", "--shapes", "1x1x8", "--extra="]
  return sweep.main(["--out", str(ctx.out), *argv, "--timeout", "1"])


def _read_only(ctx: Ctx) -> int:
  ctx.out = unwritable_dir(ctx.tmp)
  return ctx.evaluate()


def _uncreatable(ctx: Ctx) -> int:
  (ctx.tmp / "a_file").write_text("x")
  ctx.out = ctx.tmp / "a_file" / "out"
  return ctx.evaluate()


def _fail_while_writing(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
  def broken(*args, **kwargs):
    raise RuntimeError("disk full while writing report.md")

  monkeypatch.setattr(report, "markdown_report", broken)


def _edit_release(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
  """A copy of the release, built once, then q2's answer edited (3 -> 4) and a problem q4 added."""
  root = ctx.tmp / "edited"
  shutil.copytree(ctx.root, root)
  first = data.load("jsonl", manual_dir=root, data_dir=ctx.tfds_dir, split="train")
  assert first.by_id("q2")["answer"] == "3" and len(first) == 3
  path = root / "train.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  rows[1]["answer"] = "4"
  rows.append({"id": "q4", "question": "One more?", "answer": "7"})
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  ctx.root = root


EDITED = [{"id": "q2", "response": "\\boxed{4}"}, {"id": "q4", "response": "\\boxed{7}"}]


def _catts_with(edit: Callable[[pathlib.Path], None]) -> Callable[[Ctx], int]:
  """infer.catts on a copy of the tiny checkpoint changed by `edit(dir)`."""

  def call(ctx: Ctx) -> int:
    ckpt = ctx.tmp / "ckpt"
    shutil.copytree(ctx.ckpt, ckpt)
    edit(ckpt)
    return ctx.catts(ckpt=ckpt)

  return call


def _one_layer_less(ckpt: pathlib.Path) -> None:
  config = json.loads((ckpt / "config.json").read_text())
  text = config.get("text_config", config)
  text["num_hidden_layers"] -= 1
  if "layer_types" in text:
    text["layer_types"] = text["layer_types"][:-1]
  (ckpt / "config.json").write_text(json.dumps(config))


def _text_config(**values):
  def edit(ckpt: pathlib.Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config.get("text_config", config).update(values)
    (ckpt / "config.json").write_text(json.dumps(config))

  return edit


def _cut_weights(ckpt: pathlib.Path) -> None:
  weights = ckpt / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:-1000])


def _resume_files(results: bytes, run_json: bytes | None = None):
  """A setup writing --out's results.jsonl (and run.json) as an edited earlier run left them."""

  def setup(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    (ctx.out / "results.jsonl").write_bytes(results)
    if run_json is not None:
      (ctx.out / "run.json").write_bytes(run_json)

  return setup


CATTS_KEPT = (*KEPT, "results.jsonl")


def _transparent_png_everywhere(ctx: Ctx) -> int:
  """A black line on a transparent PNG reaches the model as a line on white (it came out all
  black) through the data, processing and perturbation paths alike; tests/test_images.py has
  every mode by value."""
  import io

  import numpy as np
  from PIL import Image, ImageDraw

  from catts_jax import perturb, processing
  from catts_jax.data import schema

  image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
  ImageDraw.Draw(image).line([(0, 16), (31, 16)], fill=(0, 0, 0, 255), width=2)
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  path = ctx.tmp / "line.png"
  path.write_bytes(buf.getvalue())
  seen = [
    schema.decode_images({"id": "p", "images": [buf.getvalue()]})[0],
    processing.load_image(str(path)),
    perturb.perturb(Image.open(path), "noise", 0.0, seed=0),
  ]
  for pixels in (np.asarray(im.convert("RGB")) for im in seen):
    assert pixels[16].max() == 0 and pixels[0].min() == 255, "the line is not a line on white"
  return 0


CASES = [
  # --out held by another process: every entry point that writes a run directory fails at once.
  Case("evaluate: --out held by another run", Ctx.evaluate, held=True, words=("{out}", "in use by another run", "pid {pid}")),
  Case("train.cdrl: --out held by another run", _train_main(*CDRL), held=True,
       words=("in use by another run", "pid {pid}")),
  Case("train.sft: --out held by another run", _train_main("train.sft", "configs/synthetic_tiny.py", "model.ckpt"), held=True,
       words=("in use by another run", "pid {pid}")),
  Case("train.ablation: --out held by another run", _train_main("train.ablation", "configs/ablation_colour.py", "sft.model.ckpt"),
       held=True, words=("in use by another run", "pid {pid}")),
  Case("train.sweep: --out held by another run", _sweep, held=True, words=("in use by another run", "pid {pid}")),
  Case("infer.probe: --out held by another run", _probe, held=True, words=("in use by another run", "pid {pid}")),
  # --out that cannot be used.
  Case("evaluate: read-only --out", _read_only, words=("{out}", "not writable"), kept=()),
  Case("evaluate: uncreatable --out", _uncreatable, words=("cannot create", "{out}"), kept=()),
  # Predictions that break the format: one line naming the file, the line (and id); nothing written.
  Case("predictions: a byte that is not UTF-8", Ctx.evaluate, preds=jsonl([GOOD[0], b'{"id": "q2", "response": "\xff"}']),
       words=("{preds}", "line 2", "not UTF-8", "0xff")),
  Case("predictions: a line that is not JSON", Ctx.evaluate, preds=jsonl([GOOD[0], b"{not json"]),
       words=("{preds}", "line 2", "not JSON")),
  Case("predictions: a {} line", Ctx.evaluate, preds=jsonl([GOOD[0], {}]), words=("{preds}", "line 2", "no 'id'")),
  Case("predictions: a row without id", Ctx.evaluate, preds=jsonl([{"response": "B"}]),
       words=("{preds}", "line 1", "no 'id'")),
  Case("predictions: a duplicate id", Ctx.evaluate, preds=jsonl([*GOOD, {"id": "q1", "response": "A"}]),
       words=("{preds}", "line 3", "duplicate id 'q1'", "first on line 1", "--dedupe")),
  Case("predictions: confidence true", Ctx.evaluate, preds=jsonl([{"id": "q1", "response": "B", "confidence": True}]),
       words=("{preds}", "line 1", "id q1", "confidence True", "[0, 1]")),
  Case("predictions: confidence 1.5", Ctx.evaluate, preds=jsonl([{"id": "q1", "response": "B", "confidence": 1.5}]),
       words=("id q1", "confidence 1.5", "[0, 1]")),
  Case("predictions: confidence 'x'", Ctx.evaluate, preds=jsonl([{"id": "q1", "response": "B", "confidence": "x"}]),
       words=("id q1", "confidence 'x'", "[0, 1]")),
  Case("predictions: confidence NaN", Ctx.evaluate, preds=jsonl([b'{"id": "q2", "response": "3", "confidence": NaN}']),
       words=("id q2", "confidence nan", "[0, 1]")),
  # A failure while the outputs are written: none of the earlier run's files is touched.
  Case("evaluate: a failure while writing", Ctx.evaluate, code=RuntimeError, words=("disk full",),
       preds=jsonl([{"id": "q1", "response": "A", "confidence": 0.2}]), setup=_fail_while_writing),
  # The cache follows the data folder's content: the edit is graded without --rebuild.
  Case("data: an edited folder is seen", Ctx.evaluate, code=0, preds=jsonl(EDITED), kept=(), setup=_edit_release,
       stdout=("accuracy 1.000 on 2 of 4 problems (coverage 50.0%)",)),
  # Images with alpha: composited on white on every path, as transformers does.
  Case("images: a transparent PNG", _transparent_png_everywhere, code=0, kept=()),
  # infer.catts: every input checked before the run writes or loads anything.
  Case("infer.catts: --out held by another run", Ctx.catts, held=True, words=("{out}", "in use by another run", "pid {pid}")),
  Case("infer.catts: --limit 0", lambda ctx: ctx.catts("--limit", "0"),
       words=("--limit 0: expected a positive number of problems",)),
  Case("infer.catts: --limit -1", lambda ctx: ctx.catts("--limit", "-1"), words=("--limit -1: expected a positive",)),
  Case("infer.catts: a setting out of range", lambda ctx: ctx.catts("--config.sampling.top_p=0"),
       words=("--config.sampling.top_p=0.0: expected a number in (0, 1]",)),
  Case("infer.catts: an unknown config key", lambda ctx: ctx.catts("--config.tts.tua=0.3"),
       words=("unknown config key 'tts.tua'; did you mean 'tts.tau'?",)),
  Case("infer.catts: a config.json with fewer layers than the weights", _catts_with(_one_layer_less),
       words=("checkpoint tensors are not part of the model config.json describes", "allow_partial")),
  Case("infer.catts: a non-integer config.json value", _catts_with(_text_config(num_hidden_layers=2.5)),
       words=("config.json: num_layers must be a positive integer, got 2.5",)),
  Case("infer.catts: a hidden_size its heads do not divide", _catts_with(_text_config(hidden_size=66)),
       words=("config.json: hidden_size 66, num_attention_heads 4", "must divide")),
  Case("infer.catts: a cut-off safetensors file", _catts_with(_cut_weights),
       words=("model.safetensors: truncated: tensor",)),
  Case("infer.catts: an Expert URL with credentials", lambda ctx: ctx.catts("--expert", "https://me:pw-secret@example.com/v1"),
       words=("https://example.com/v1 carries credentials", "api_key_env")),
  Case("infer.catts: a {} line in results.jsonl", Ctx.catts, kept=CATTS_KEPT,
       setup=_resume_files(b'{"id": "q1", "methods": {}}\n{}\n'), words=("results.jsonl: line 2 is a row without 'id'",)),
  Case("infer.catts: a damaged run.json", Ctx.catts, kept=(*CATTS_KEPT, "run.json"),
       setup=_resume_files(b'{"id": "q1"}\n', b'{"ns": [1], "meth'), words=("run.json is damaged",)),
  # Training settings out of range: one line naming the setting, exit 2, before any work.
  Case("train.cdrl: a negative learning rate", _cdrl("--config.optimizer.learning_rate=-0.001"),
       words=("--config.optimizer.learning_rate=-0.001: expected a number > 0",)),
  Case("train.cdrl: a learning rate of 0", _cdrl("--config.optimizer.learning_rate=0"),
       words=("--config.optimizer.learning_rate=0.0: expected a number > 0",)),
  Case("train.cdrl: 0 steps", _cdrl("--config.train.steps=0"), words=("--config.train.steps=0: expected an integer >= 1",)),
  Case("train.cdrl: a group size of 0", _cdrl("--config.rollout.group_size=0"),
       words=("--config.rollout.group_size=0: expected an integer >= 1",)),
  Case("train.cdrl: a tempered rollout", _cdrl("--config.rollout.temperature=0.7"),
       words=("--config.rollout.temperature=0.7, top_p=1.0: the learner scores the temperature-1 policy",)),
  Case("train.cdrl: a data limit of 0", _cdrl("--config.data.limit=0"),
       words=("--config.data.limit=0: expected an integer >= 1",)),
  Case("train.cdrl: a negative data limit", _cdrl("--config.data.limit=-1"),
       words=("--config.data.limit=-1: expected an integer >= 1",)),
  Case("train.cdrl: rows that do not split over the devices", _cdrl("--config.train.prompts_per_step=3"),
       words=("--config.train.prompts_per_step=3", "12 rows a step", "multiple of data x fsdp = 8 devices")),
  Case("train.cdrl: a micro-batch that does not split over the devices", _cdrl("--config.train.micro_batch=4"),
       words=("--config.train.micro_batch=4", "multiple of data x fsdp = 8 devices")),
  Case("train.cdrl: a mesh for other devices", _train_main(*CDRL[:3], "--config.mesh.data=2"),
       words=("--config.mesh=", "needs 2 devices, have 8")),
  Case("train.sft: -1 steps", _sft("--config.train.steps=-1"), words=("--config.train.steps=-1: expected an integer >= 1",)),
  Case("train.sft: a negative learning rate", _sft("--config.optimizer.learning_rate=-0.001"),
       words=("--config.optimizer.learning_rate=-0.001: expected a number > 0",)),
  Case("train.sft: a batch size of 0", _sft("--config.train.batch_size=0"),
       words=("--config.train.batch_size=0: expected an integer >= 1",)),
  Case("train.sft: rows that do not split over the devices", _sft_on_a_mesh, code=ConfigError,
       words=("--config.train.batch_size=12", "multiple of data x fsdp = 8 devices")),
  # A resume with other settings than its run's (run.json): refused, naming each change.
  Case("train.cdrl: resume with another learning rate", _cdrl("--config.optimizer.learning_rate=0.002"),
       setup=_resumable("cdrl"), kept=RESUMED,
       words=("step 3", "other settings: optimizer.learning_rate 0.001 -> 0.002;", "--override_resume")),
  Case("train.cdrl: resume with another seed", _cdrl("--config.train.seed=1"), setup=_resumable("cdrl"), kept=RESUMED,
       words=("other settings: train.seed 0 -> 1;",)),
  Case("train.cdrl: resume with another group size", _cdrl("--config.rollout.group_size=8"), setup=_resumable("cdrl"),
       kept=RESUMED, words=("other settings: rollout.group_size 4 -> 8;",)),
  Case("train.cdrl: resume with a data limit", _cdrl("--config.data.limit=4"), setup=_resumable("cdrl"), kept=RESUMED,
       words=("other settings: data.limit null -> 4;",)),
  Case("train.sft: resume with another learning rate", _sft("--config.optimizer.learning_rate=0.001"),
       setup=_resumable("sft"), kept=RESUMED, words=("other settings: optimizer.learning_rate 0.003 -> 0.001;",)),
  Case("train.sft: resume with another batch size", _sft("--config.train.batch_size=16"), setup=_resumable("sft"),
       kept=RESUMED, words=("other settings: train.batch_size 32 -> 16;",)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, release, good_run, tiny_ckpt, tmp_path, monkeypatch, capsys):
  root, tfds_dir = release
  out = tmp_path / "out"
  shutil.copytree(good_run, out)
  preds = tmp_path / "preds.jsonl"
  preds.write_bytes(case.preds)
  ctx = Ctx(root, tfds_dir, out, preds, tmp_path, tiny_ckpt)
  if case.setup:  # before the snapshot: the files it writes in --out must stay too
    case.setup(ctx, monkeypatch)
  before = {name: (out / name).read_bytes() for name in case.kept}
  listing = sorted(p.name for p in out.iterdir())
  capsys.readouterr()

  with held_by_another_process(out) if case.held else contextlib.nullcontext() as pid:
    began = time.perf_counter()
    if isinstance(case.code, type):
      with pytest.raises(case.code) as raised:
        case.call(ctx)
      message = str(raised.value)
    else:
      assert case.call(ctx) == case.code, case.name
      printed = capsys.readouterr()
      message = printed.err.strip()
      assert all(w in printed.out for w in case.stdout), (case.name, printed.out)
    seconds = time.perf_counter() - began

  words = [w.format(pid=pid, out=ctx.out, preds=preds) for w in case.words]
  if case.code != 0:
    assert "Traceback" not in message, (case.name, message)
    last = message.splitlines()[-1] if message else ""
    assert all(w in last for w in words), (case.name, last)
  if case.held:
    assert seconds < 20, f"{case.name}: the second run waited {seconds:.1f} s instead of failing at once"
  for name, content in before.items():
    assert (out / name).read_bytes() == content, f"{case.name}: {name} changed"
  if case.kept:
    assert sorted(p.name for p in out.iterdir()) == listing, f"{case.name}: files left behind"
