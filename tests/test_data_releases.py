"""MathVista, MMStar, MMMU and jsonl builders on fixtures in their official schemas; mixtures."""

from __future__ import annotations

import json

import pytest
from fixtures import releases

from catts_jax import data
from catts_jax.data import mmstar


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def mathvista(tmp_path_factory, tfds_dir):
  root = releases.write_mathvista_parquet(tmp_path_factory.mktemp("mathvista"))
  return data.load("mathvista", manual_dir=root, data_dir=tfds_dir)


@pytest.fixture(scope="module")
def mmstar_ds(tmp_path_factory, tfds_dir):
  return data.load(
    "mmstar", manual_dir=releases.write_mmstar(tmp_path_factory.mktemp("mmstar")), data_dir=tfds_dir
  )


@pytest.fixture(scope="module")
def mmmu_root(tmp_path_factory):
  return releases.write_mmmu(tmp_path_factory.mktemp("mmmu"))


def test_mathvista_parquet(mathvista):
  assert len(mathvista) == len(releases.mathvista_rows())
  mc = mathvista.by_id("1")
  assert mc["options"] == ["135°", "140°", "145°", "150°"] and mc["answer"] == "C"
  assert mc["metadata"]["answer_text"] == "145°" and mc["question_type"] == "multiple_choice"
  assert mc["subject"] == "geometry problem solving" and mc["level"] == "high school"
  assert mc["metadata"]["skills"] == ["geometry reasoning", "algebraic reasoning"]
  assert data.prompt_for(mc, "query") == mc["metadata"]["query"]
  assert data.prompt_for(mc) == "Find the angle BOC.\nChoices:\n(A) 135°\n(B) 140°\n(C) 145°\n(D) 150°"
  flt = mathvista.by_id("3")
  assert (flt["answer"], flt["answer_type"], flt["metadata"]["precision"], flt["metadata"]["unit"]) == (
    "1.2",
    "float",
    1,
    "m",
  )
  assert mathvista.by_id("4")["answer_type"] == "list" and mathvista.by_id("2")["answer_type"] == "integer"
  for ex in mathvista:
    (im,) = data.decode_images(ex)
    assert im.size == (32, 24)


def test_mathvista_json_release_gives_the_same_examples(tmp_path, mathvista):
  ds = data.load(
    "mathvista", manual_dir=releases.write_mathvista_json(tmp_path / "mv"), data_dir=tmp_path / "tfds"
  )
  strip = lambda ex: {k: v for k, v in ex.items() if k != "images"}  # noqa: E731
  assert [strip(ex) for ex in ds] == [strip(ex) for ex in mathvista]
  assert all(len(ex["images"]) == 1 for ex in ds)


def test_mmstar(mmstar_ds):
  assert len(mmstar_ds) == 4
  ex = mmstar_ds.by_id("0")
  assert (
    ex["options"][0] == "The suitcase is on the book."
    and ex["options"][3] == "The suitcase is beneath the book."
  )
  assert (
    ex["answer"] == "A" and ex["subject"] == "coarse perception" and ex["category"] == "image scene and topic"
  )
  assert ex["metadata"]["source"] == "MMBench"
  prompt = data.prompt_for(ex)  # the paper: boxed instruction for MMStar; options already inline
  assert prompt.count("The suitcase is on the book.") == 1 and "\\boxed{}" in prompt
  assert mmstar_ds.by_id("2")["options"] == ["1", "10", "2", "12"]


def test_mmstar_option_parsing():
  assert mmstar.parse_inline_options("Q?\nOptions: A: x, y, B: z., C: w") == ["x, y", "z.", "w"]
  assert mmstar.parse_inline_options("Q?\nOptions: A. 1\nB. 2") == ["1", "2"]
  assert mmstar.parse_inline_options("no options here") == []


def test_mmmu_validation_and_dev(mmmu_root, tfds_dir):
  val = data.load("mmmu", manual_dir=mmmu_root, data_dir=tfds_dir)
  assert val.split == "validation" and len(val) == 5
  art = val.by_id("validation_Art_Theory_2")
  assert art["subject"] == "Art_Theory" and art["category"] == "Art History" and art["level"] == "Medium"
  assert art["options"] == ["<image 1>", "<image 2>"] and len(art["images"]) == 2
  assert [im.size for im in data.decode_images(art)] == [(32, 24), (32, 24)]
  assert "(B) <image 2>" in data.prompt_for(art) and "\\boxed{}" in data.prompt_for(art)
  assert data.chat_content(art, "A <image 2> B <image 1> C <image 2>") == [
    {"type": "text", "text": "A "},
    {"type": "image", "index": 1},
    {"type": "text", "text": " B "},
    {"type": "image", "index": 0},
    {"type": "text", "text": " C <image 2>"},
  ]
  one = val.by_id("validation_Math_1")
  assert data.chat_content(one, "x") == [{"type": "image", "index": 0}, {"type": "text", "text": "x"}]
  # Tags that do not index the images (Math-Vision style): images first, text untouched.
  assert data.chat_content(one, "<image1> and <image2>")[0] == {"type": "image", "index": 0}
  ratio = val.by_id("validation_Math_2")
  assert ratio["question_type"] == "open" and ratio["metadata"]["accepted_answers"] == ["24/7", "3.429"]
  dev = data.load("mmmu", manual_dir=mmmu_root, data_dir=tfds_dir, split="dev")
  assert [ex["id"] for ex in dev] == ["dev_Math_1"]


def test_jsonl_user_data(tmp_path):
  root = releases.write_jsonl(tmp_path / "mine")
  with pytest.raises(ValueError, match="several splits"):
    data.load("jsonl", manual_dir=root, data_dir=tmp_path / "tfds")
  ds = data.load("jsonl", manual_dir=root, data_dir=tmp_path / "tfds", split="train")
  q1, q2, q3 = ds
  assert q1["answer"] == "B" and q1["options"] == ["red", "blue"] and q1["metadata"] == {"source": "mine"}
  assert q2["answer_type"] == "integer" and q2["level"] == "2" and q2["metadata"] == {"difficulty": "easy"}
  assert len(q3["images"]) == 2 and q3["metadata"]["precision"] == 2
  # A split that is not there names the flag that forces a new build; one added to the release
  # after the first build is seen without it (the cache follows the folder's content).
  with pytest.raises(ValueError, match="split 'extra' not built .*--rebuild"):
    data.load("jsonl", manual_dir=root, data_dir=tmp_path / "tfds", split="extra")
  (root / "extra.jsonl").write_text(json.dumps({"id": "e1", "question": "q", "answer": "1"}) + "\n")
  extra = data.load("jsonl", manual_dir=root, data_dir=tmp_path / "tfds", split="extra")
  assert [ex["id"] for ex in extra] == ["e1"]
  extra = data.load("jsonl", manual_dir=root, data_dir=tmp_path / "tfds", split="extra", rebuild=True)
  assert [ex["id"] for ex in extra] == ["e1"]


def test_the_cache_follows_the_folders_content(tmp_path):
  """An answer edited and a problem added after the first build are seen without rebuild; an
  unchanged folder reuses its build; a tfds cache inside the folder does not count as content."""
  root = releases.write_jsonl(tmp_path / "mine")
  tfds_dir = root / ".." / "mine" / "tfds"  # inside the release folder
  first = data.load("jsonl", manual_dir=root, data_dir=tfds_dir, split="train")
  assert first.by_id("q2")["answer"] == "3" and len(first) == 3
  name = data.builder("jsonl", root, tfds_dir).builder_config.name
  again = data.builder("jsonl", root, tfds_dir)
  assert again.builder_config.name == name and again.data_path.exists()  # built once, reused
  path = root / "train.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  rows[1]["answer"] = "4"  # the file keeps its size: its modification time tells
  size = path.stat().st_size
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert path.stat().st_size == size
  edited = data.load("jsonl", manual_dir=root, data_dir=tfds_dir, split="train")
  assert edited.by_id("q2")["answer"] == "4" and len(edited) == 3
  rows.append({"id": "q4", "question": "One more?", "answer": "7"})
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  added = data.load("jsonl", manual_dir=root, data_dir=tfds_dir, split="train")
  assert added.by_id("q2")["answer"] == "4" and added.by_id("q4")["answer"] == "7" and len(added) == 4
  assert data.builder("jsonl", root, tfds_dir).builder_config.name != name


def test_bad_releases_name_the_item(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load("mmstar", manual_dir=tmp_path / "missing", data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match="unknown benchmark"):
    data.load("chartqa", manual_dir=tmp_path, data_dir=tmp_path / "tfds")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no split"):
    data.load("mathvision", manual_dir=tmp_path / "empty", data_dir=tmp_path / "tfds")
  bad = tmp_path / "bad"
  (bad / "images").mkdir(parents=True)
  (bad / "images" / "1.jpg").write_bytes(b"not an image")
  row = {
    "id": "1",
    "question": "q",
    "options": [],
    "answer": "3",
    "level": 1,
    "subject": "s",
    "image": "images/1.jpg",
  }
  (bad / "testmini.jsonl").write_text(json.dumps(row) + "\n")
  with pytest.raises(Exception, match=r"id 1.*not a readable image"):
    data.load("mathvision", manual_dir=bad, data_dir=tmp_path / "tfds")


def test_weighted_mixture(mathvista, mmstar_ds):
  sources = {"mathvista": mathvista, "mmstar": mmstar_ds}
  mix = data.mix(sources, size=6, weights={"mathvista": 1, "mmstar": 1}, seed=3)
  assert len(mix) == 6
  names = [name for name, _, _ in mix.manifest]
  assert names.count("mathvista") == 3 and names.count("mmstar") == 3
  assert len(set(mix.manifest)) == 6  # without replacement
  assert mix.manifest == data.mix(sources, size=6, weights={"mathvista": 1, "mmstar": 1}, seed=3).manifest
  assert {ex["benchmark"] for ex in mix} == {"mathvista", "mmstar"}
  assert [ex["id"] for ex in mix[:2]] == [i for _, _, i in mix.manifest[:2]]
  from catts_jax.data import mixture

  assert mixture.counts([1, 1, 1], 10) == [4, 3, 3] and sum(mixture.counts([0.2, 0.5, 0.3], 1936)) == 1936
  with pytest.raises(ValueError, match="has 4 examples"):
    data.mix(sources, size=9, weights={"mathvista": 0, "mmstar": 1})
