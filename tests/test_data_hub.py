"""Hub datasets and dataset repository folders.

Offline tests build repositories in `tmp_path` in the layouts of real Hub datasets (a README.md whose YAML front matter
lists `configs` with `data_files` per split, parquet shards named `<split>-0000k-of-0000n[-hash].parquet`, image
columns stored with the `datasets.Image` feature) and load them by folder, which is the code path of a Hub id:
`datasets.load_dataset(path, name=..., split=..., streaming=...)`. The `online` tests read a few samples of the real
datasets (run with VLMNB_ONLINE=1 and the Hub reachable)."""
from __future__ import annotations
import io, re
from pathlib import Path

import datasets as hfd
import huggingface_hub
import pytest
from datasets.info import DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from huggingface_hub import DatasetCardData
from PIL import Image

from vlmnb.data import DataError, HubUnavailable, is_hub_id, load_data, prepare, read_records

RGB = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
       "purple": (128, 0, 128), "cyan": (0, 255, 255), "white": (255, 255, 255)}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    "The Arrow caches that `load_dataset` prepares go under tmp_path, never ~/.cache."
    monkeypatch.setattr(hfd.config, "HF_DATASETS_CACHE", tmp_path/"hf-datasets")


def png(colour: str, size=(24, 24)) -> bytes:
    buf = io.BytesIO(); Image.new("RGB", size, RGB[colour]).save(buf, format="PNG"); return buf.getvalue()

def colour_of(img: Image.Image) -> str:
    return next(name for name, rgb in RGB.items() if img.getpixel((0, 0)) == rgb)


# ------------------------------------------------------------------ writing repositories in the Hub's layout
def write_shards(folder: Path, split: str, shards: list[list[dict]], features: hfd.Features, suffix: str = "") -> None:
    "Parquet shards `<split>-0000k-of-0000n<suffix>.parquet`, as push_to_hub names them (some repos add a hash suffix)."
    folder.mkdir(parents=True, exist_ok=True)
    for k, rows in enumerate(shards):
        ds = hfd.Dataset.from_list(rows, features=features)
        ds.to_parquet(str(folder/f"{split}-{k:05d}-of-{len(shards):05d}{suffix}.parquet"))

def write_repo(root: Path, configs: dict[str, dict[str, list[list[dict]]]], features: dict[str, hfd.Features],
               suffix: str = "", sizes: bool = True) -> Path:
    """A dataset repository: for each config, its splits' shards under `data/` (config `default`) or a folder named after the
    config, and a README.md whose front matter lists the configs with their `data_files` and (`sizes`) each split's size."""
    card, infos = DatasetCardData(), {}
    for name, splits in configs.items():
        folder = "data" if name == "default" else name
        split_dict = SplitDict()
        for split, shards in splits.items():
            write_shards(root/folder, split, shards, features[name], suffix)
            split_dict.add(SplitInfo(split, num_bytes=1000, num_examples=sum(map(len, shards))))
        infos[name] = hfd.DatasetInfo(features=features[name], splits=split_dict if sizes else None, config_name=name)
    DatasetInfosDict(infos).to_dataset_card_data(card)
    card["configs"] = [{"config_name": name, "data_files": [{"split": s, "path": f"{'data' if name == 'default' else name}/{s}-*"}
                                                              for s in splits]} for name, splits in configs.items()]
    (root/"README.md").write_text(f"---\n{card.to_yaml()}\n---\n# A test repository\n")
    return root


# HuggingFaceH4/llava-instruct-mix-vsft: messages whose content items are {index, text, type}, images a list of images;
# one config (default), splits train and test under data/. Its card is written by hand in the older `sequence: image` form.
LLAVA_FEATURES = hfd.Features({
    "messages": hfd.List({"content": hfd.List({"index": hfd.Value("int64"), "text": hfd.Value("string"), "type": hfd.Value("string")}),
                          "role": hfd.Value("string")}),
    "images": hfd.List(hfd.Image())})
LLAVA_CARD = """---
dataset_info:
  features:
  - name: messages
    list:
    - name: content
      list:
      - name: index
        dtype: int64
      - name: text
        dtype: string
      - name: type
        dtype: string
    - name: role
      dtype: string
  - name: images
    sequence: image
  splits:
  - name: train
    num_bytes: 4000
    num_examples: 5
  - name: test
    num_bytes: 1000
    num_examples: 2
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
---
A small repository in the layout of llava-instruct-mix-vsft.
"""

def _text(t): return {"index": None, "text": t, "type": "text"}
def _image(k): return {"index": k, "text": None, "type": "image"}

def llava_row(i: int, colours: list[str], text_first: bool = False, follow_up: bool = False) -> dict:
    question = _text(f"Question {i}: which colours?")
    images = [_image(k) for k in range(len(colours))]
    turns = [{"content": [question, *images] if text_first else [*images, question], "role": "user"},
             {"content": [_text(" and ".join(colours))], "role": "assistant"}]
    if follow_up: turns += [{"content": [_text("How many?")], "role": "user"}, {"content": [_text(str(len(colours)))], "role": "assistant"}]
    return {"messages": turns, "images": [{"bytes": png(c), "path": f"{i}-{c}.png"} for c in colours]}

LLAVA_TRAIN = [["red"], ["green", "blue"], ["yellow"], ["purple"], ["cyan"]]

@pytest.fixture
def llava(tmp_path) -> Path:
    root = tmp_path/"llava-instruct-mix-vsft"
    rows = [llava_row(0, ["red"]), llava_row(1, ["green", "blue"]), llava_row(2, ["yellow"], text_first=True),
            llava_row(3, ["purple"], follow_up=True), llava_row(4, ["cyan"])]
    write_shards(root/"data", "train", [rows[:3], rows[3:]], LLAVA_FEATURES)
    write_shards(root/"data", "test", [[llava_row(0, ["white"]), llava_row(1, ["red"])]], LLAVA_FEATURES)
    (root/"README.md").write_text(LLAVA_CARD)
    return root


# HuggingFaceM4/the_cauldron: one config per source set, each in its own folder; images (a list) and texts [{user, assistant, source}].
CAULDRON_FEATURES = hfd.Features({"images": hfd.List(hfd.Image()),
                                  "texts": hfd.List({"user": hfd.Value("string"), "assistant": hfd.Value("string"), "source": hfd.Value("string")})})

def cauldron_row(colour: str, source: str, turns: int = 1) -> dict:
    texts = [{"user": f"Question {t}: what colour?\nAnswer briefly.", "assistant": f"Answer: {colour}", "source": source} for t in range(turns)]
    return {"images": [{"bytes": png(colour), "path": None}], "texts": texts}

@pytest.fixture
def cauldron(tmp_path) -> Path:
    return write_repo(tmp_path/"the_cauldron", {
        "ai2d": {"train": [[cauldron_row("red", "ai2d"), cauldron_row("green", "ai2d")]]},
        "chartqa": {"train": [[cauldron_row("blue", "chartqa", turns=2)], [cauldron_row("yellow", "chartqa"), cauldron_row("purple", "chartqa")]]},
    }, {"ai2d": CAULDRON_FEATURES, "chartqa": CAULDRON_FEATURES}, suffix="-37bee7c5")


# HuggingFaceM4/ChartQA: image, query, label (a list of one answer), human_or_machine (a class label); train, val, test.
CHARTQA_FEATURES = hfd.Features({"image": hfd.Image(), "query": hfd.Value("string"), "label": hfd.List(hfd.Value("string")),
                                 "human_or_machine": hfd.ClassLabel(names=["human", "machine"])})

def chartqa_row(colour): return {"image": {"bytes": png(colour), "path": None}, "query": "Which colour is the bar?", "label": [colour], "human_or_machine": 1}

@pytest.fixture
def chartqa(tmp_path) -> Path:
    return write_repo(tmp_path/"ChartQA", {"default": {"train": [[chartqa_row("red"), chartqa_row("green")]],
                                                       "val": [[chartqa_row("blue")]], "test": [[chartqa_row("yellow")]]}},
                      {"default": CHARTQA_FEATURES})


# lmms-lab/DocVQA: configs DocVQA and InfographicVQA, each in its own folder, splits validation and test; answers is a list.
DOCVQA_FEATURES = hfd.Features({"questionId": hfd.Value("string"), "question": hfd.Value("string"),
                                "question_types": hfd.List(hfd.Value("string")), "image": hfd.Image(), "docId": hfd.Value("int64"),
                                "answers": hfd.List(hfd.Value("string")), "data_split": hfd.Value("string")})
INFOVQA_FEATURES = hfd.Features({"questionId": hfd.Value("string"), "question": hfd.Value("string"),
                                 "answers": hfd.List(hfd.Value("string")), "answer_type": hfd.List(hfd.Value("string")),
                                 "image": hfd.Image(), "image_url": hfd.Value("string"), "ocr": hfd.Value("string"),
                                 "data_split": hfd.Value("string")})

def docvqa_row(i, answers, image: bytes | None = None, colour: str = "white"):
    return {"questionId": str(i), "question": f"What is written on page {i}?", "question_types": ["free_text"],
            "image": {"bytes": image or png(colour), "path": f"page{i}.png"}, "docId": i, "answers": answers, "data_split": "val"}

def infovqa_row(i, answers):
    return {"questionId": str(i), "question": f"What does chart {i} show?", "answers": answers, "answer_type": ["single span"],
            "image": {"bytes": png("cyan"), "path": None}, "image_url": f"https://example.com/{i}.jpeg", "ocr": "", "data_split": "test"}

@pytest.fixture
def docvqa(tmp_path) -> Path:
    "DocVQA validation: sample 1 has no answer, sample 3 an image that does not decode; the others are fine."
    validation = [docvqa_row(0, ["1 May 1990", "May 1, 1990"]), docvqa_row(1, []), docvqa_row(2, ["ITC"]),
                  docvqa_row(3, ["0.28"], image=b"\x89PNG\r\n\x1a\n truncated"), docvqa_row(4, ["Smith"])]
    return write_repo(tmp_path/"DocVQA", {
        "DocVQA": {"validation": [validation], "test": [[docvqa_row(9, ["x"])]]},
        "InfographicVQA": {"validation": [[infovqa_row(0, ["12%"])]], "test": [[infovqa_row(0, ["Asia", "asia"]), infovqa_row(1, ["3"])]]},
    }, {"DocVQA": DOCVQA_FEATURES, "InfographicVQA": INFOVQA_FEATURES})


# merve/vqav2-small: one split, validation, in several shards; image, question, multiple_choice_answer.
VQAV2_FEATURES = hfd.Features({"multiple_choice_answer": hfd.Value("string"), "question": hfd.Value("string"), "image": hfd.Image()})

def vqav2_shards():
    colours = ["red", "green", "blue", "yellow", "purple", "cyan"]
    rows = [{"multiple_choice_answer": c, "question": f"What colour is picture {i}?", "image": {"bytes": png(c), "path": None}}
            for i, c in enumerate(colours)]
    return [rows[0:3], rows[3:5], rows[5:]]

@pytest.fixture
def vqav2(tmp_path) -> Path:
    return write_repo(tmp_path/"vqav2-small", {"default": {"validation": vqav2_shards()}}, {"default": VQAV2_FEATURES})


# ------------------------------------------------------------------ ids and paths
@pytest.mark.parametrize("path,expected", [
    ("HuggingFaceH4/llava-instruct-mix-vsft", True), ("HuggingFaceM4/the_cauldron", True), ("lmms-lab/DocVQA", True),
    ("hf://datasets/merve/vqav2-small", True), ("data/train.jsonl", False), ("./data/images", False), ("/data/images", False),
    ("~/data/images", False), ("images", False), ("data/images/train", False), ("a--b/c", False), ("owner/name.parquet", False)])
def test_is_hub_id(path, expected):
    assert is_hub_id(path) is expected


@pytest.mark.parametrize("path", ["nope.jsonl", "./data/missing", "data/missing/train", "data/train.parquet"])
def test_missing_local_path_that_is_no_hub_id_says_no_such_file(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        load_data(path)
    assert not isinstance(e.value, HubUnavailable)


# ------------------------------------------------------------------ llava-instruct-mix-vsft
def test_llava_layout_canonicalises(llava):
    ds, report = load_data(str(llava), split="train")
    assert report.ok and report.n_samples == 5 and ds["source_index"] == list(range(5))
    for sample, colours in zip(ds, LLAVA_TRAIN):
        assert [colour_of(im) for im in sample["images"]] == colours
        placeholders = [it for t in sample["messages"] for it in t["content"] if it["type"] == "image"]
        assert placeholders == [{"type": "image"}] * len(colours)
        assert sample["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": " and ".join(colours)}]}
    assert [it["type"] for it in ds[2]["messages"][0]["content"]] == ["text", "image"]  # text before the image stays before it
    assert [t["role"] for t in ds[3]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert "index" not in ds[0]["messages"][0]["content"][0]  # the layout's `index` is not part of the canonical item


def test_llava_repository_with_two_splits_needs_one(llava):
    with pytest.raises(ValueError, match=re.escape("has splits ['test', 'train']; pass split=")):
        load_data(str(llava))
    ds, _ = load_data(str(llava), split="test")
    assert [colour_of(s["images"][0]) for s in ds] == ["white", "red"]
    with pytest.raises(ValueError, match='Unknown split "valid".*Pass split='):
        load_data(str(llava), split="valid")


@pytest.mark.parametrize("spec", ["train[:30%]", "train[50%:]", "train[:70%]", "train[1:3]", "train[-2:]", "train[:100]", "train[-60%:-20%]"])
def test_slices_select_the_rows_datasets_selects(llava, spec):
    "Each sample keeps its index in the split; the indices are the rows that `datasets` itself reads for the same spec."
    expected = [int(re.match(r"Question (\d+)", r["messages"][0]["content"][0]["text"] or r["messages"][0]["content"][-1]["text"])[1])
                for r in hfd.load_dataset(str(llava), split=spec)]
    for streaming in (False, True):  # while streaming, percentages use the split size in the card
        ds, report = load_data(str(llava), split=spec, streaming=streaming)
        assert ds["source_index"] == expected, streaming
        assert report.n_samples == len(expected)


def test_streamed_and_prepared_give_the_same_samples(llava):
    prepared, _ = load_data(str(llava), split="train")
    streamed, report = load_data(str(llava), split="train", streaming=True)
    assert report.n_samples == 5
    assert streamed.with_format(None).to_list() == prepared.with_format(None).to_list()


# ------------------------------------------------------------------ the Cauldron: configs by name
def test_cauldron_config_by_name(cauldron):
    ds, report = load_data(str(cauldron), name="chartqa", split="train")
    assert report.ok and len(ds) == 3
    first = ds[0]
    assert [t["role"] for t in first["messages"]] == ["user", "assistant"] * 2  # two pairs in one row
    assert first["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "Question 0: what colour?\nAnswer briefly."}]
    assert first["messages"][1]["content"] == [{"type": "text", "text": "Answer: blue"}]
    assert [colour_of(s["images"][0]) for s in ds] == ["blue", "yellow", "purple"]
    ai2d, _ = load_data(str(cauldron), name="ai2d", split="train", streaming=True)
    assert [colour_of(s["images"][0]) for s in ai2d] == ["red", "green"]


def test_cauldron_without_or_with_an_unknown_config_name(cauldron):
    with pytest.raises(ValueError, match=re.escape("available configs: ['ai2d', 'chartqa']. Pass name=")):
        load_data(str(cauldron), split="train")
    with pytest.raises(ValueError, match="'vqav2' not found.*Pass name="):
        load_data(str(cauldron), name="vqav2", split="train")


# ------------------------------------------------------------------ VQA columns: ChartQA, DocVQA, VQAv2
def test_chartqa_query_and_label(chartqa):
    ds, _ = load_data(str(chartqa), split="val")
    assert ds[0]["messages"] == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which colour is the bar?"}]},
                                 {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]
    assert colour_of(ds[0]["images"][0]) == "blue"


def test_docvqa_config_and_first_accepted_answer(docvqa):
    ds, _ = load_data(str(docvqa), name="InfographicVQA", split="test")
    assert [s["messages"][1]["content"][0]["text"] for s in ds] == ["Asia", "3"]


def test_vqav2_multiple_choice_answer_over_shards(vqav2):
    ds, report = load_data(str(vqav2), split="validation")
    assert report.n_samples == 6
    assert [s["messages"][1]["content"][0]["text"] for s in ds] == [colour_of(s["images"][0]) for s in ds]


def test_streaming_with_n_reads_only_the_shards_it_uses(vqav2):
    "Shards 1 and 2 are replaced by bytes that are not parquet: preparing the split fails, streaming the first 2 samples does not."
    for shard in sorted((vqav2/"data").glob("validation-*.parquet"))[1:]: shard.write_bytes(b"not parquet")
    ds, report = load_data(str(vqav2), split="validation", streaming=True, n=2)
    assert ds["source_index"] == [0, 1] and report.n_samples == 2
    assert load_data(str(vqav2), split="validation[1:3]", streaming=True)[0]["source_index"] == [1, 2]
    with pytest.raises(Exception):
        load_data(str(vqav2), split="validation")


def test_streaming_percentages_need_the_split_size(tmp_path):
    repo = write_repo(tmp_path/"no-sizes", {"default": {"validation": vqav2_shards()}}, {"default": VQAV2_FEATURES}, sizes=False)
    with pytest.raises(ValueError, match="needs the size of the split.*slice by counts"):
        load_data(str(repo), split="validation[:50%]", streaming=True)
    assert load_data(str(repo), split="validation[:50%]")[0]["source_index"] == [0, 1, 2]  # prepared, the size is known


# ------------------------------------------------------------------ bad samples, by their index in the split
def test_bad_samples_reported_by_index(docvqa):
    with pytest.raises(DataError) as e:
        load_data(str(docvqa), name="DocVQA", split="validation")
    assert "sample 1 [empty_assistant]" in str(e.value) and "sample 3 [corrupt_image]" in str(e.value)
    for streaming in (False, True):
        ds, report = load_data(str(docvqa), name="DocVQA", split="validation", on_error="skip", streaming=streaming)
        assert ds["source_index"] == [0, 2, 4] and report.bad_indices == [1, 3] and report.n_samples == 5
        ds, report = load_data(str(docvqa), name="DocVQA", split="validation[2:]", on_error="skip", streaming=streaming)
        assert ds["source_index"] == [2, 4] and report.bad_indices == [3]
    ds, report = load_data(str(docvqa), name="DocVQA", split="validation", on_error="skip", n=2, streaming=True)
    assert ds["source_index"] == [0, 2] and report.n_samples == 3  # reading stops at the second usable sample


# ------------------------------------------------------------------ Image features as they arrive: PIL images, dicts, lists
def test_images_as_pil_dicts_and_lists():
    red, blue = Image.new("RGB", (20, 20), RGB["red"]), {"bytes": png("blue"), "path": "blue.png"}
    records = [{"question": "Colour?", "answer": "red", "image": red},
               {"question": "Colours?", "answers": ["red and blue"], "images": [red, blue]},
               {"texts": [{"user": "Colours?", "assistant": "blue", "source": "x"}], "images": [blue]}]
    ds, report = prepare(records)
    assert report.ok and [[colour_of(im) for im in s["images"]] for s in ds] == [["red"], ["red", "blue"], ["blue"]]
    decoded = hfd.Dataset.from_dict({"question": ["Colour?"], "label": [["blue"]], "image": [red]}, features=hfd.Features(
        {"question": hfd.Value("string"), "label": hfd.List(hfd.Value("string")), "image": hfd.Image()}))
    ds, _ = prepare(hfd.DatasetDict(val=decoded), split="val")
    assert colour_of(ds[0]["images"][0]) == "red" and ds[0]["messages"][1]["content"][0]["text"] == "blue"


# ------------------------------------------------------------------ what is a repository, and what is not
def test_save_to_disk_folder_is_not_a_repository(tmp_path):
    saved = tmp_path/"saved"
    hfd.DatasetDict(train=hfd.Dataset.from_dict({"prompt": ["a", "b", "c"], "completion": ["1", "2", "3"]})).save_to_disk(str(saved))
    ds, _ = load_data(str(saved), split="train[1:]")
    assert ds["source_index"] == [1, 2]
    with pytest.raises(ValueError, match="name='x' picks a config"):
        load_data(str(saved), name="x")


def test_repository_without_a_card_gets_splits_from_file_names(tmp_path):
    repo = tmp_path/"no-card"
    write_shards(repo/"data", "train", [[chartqa_row("red")], [chartqa_row("green")]], CHARTQA_FEATURES)
    write_shards(repo/"data", "test", [[chartqa_row("blue")]], CHARTQA_FEATURES)
    assert [colour_of(s["images"][0]) for s in load_data(str(repo), split="test")[0]] == ["blue"]
    assert len(load_data(str(repo), split="train")[0]) == 2
    records, root, n = read_records(repo, split="train")
    assert (root, n) == (repo, 2)


# ------------------------------------------------------------------ offline, and not in the cache
@pytest.fixture
def offline(tmp_path, monkeypatch):
    "Offline as HF_HUB_OFFLINE=1 makes it (read by datasets and huggingface_hub when they are imported), with empty caches."
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"): monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hfd.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path/"hub-cache"))
    return monkeypatch

@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_id_not_in_cache_names_id_variable_and_ways_out(offline, var, streaming):
    offline.setenv(var, "1")
    with pytest.raises(HubUnavailable) as e:
        load_data("vlmnb-tests/not-downloaded", split="train[:10]", streaming=streaming)
    msg = str(e.value)
    assert "'vlmnb-tests/not-downloaded' is not in the local cache" in msg and f"{var} is set" in msg
    assert f"Go online (unset {var})" in msg
    assert "hf download vlmnb-tests/not-downloaded --repo-type dataset --local-dir DIR" in msg and "give DIR as the path" in msg
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ConnectionError)


def test_offline_hf_prefix_and_the_cli(offline, capsys):
    offline.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailable, match="hf://datasets/owner/name"):
        load_data("hf://datasets/owner/name", split="train")
    from vlmnb.cli import main
    assert main(["data", "check", "owner/name", "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "vlmnb: error: Hub dataset 'owner/name' is not in the local cache, and HF_HUB_OFFLINE is set" in err


# ------------------------------------------------------------------ the real Hub
@pytest.mark.online
def test_online_llava_instruct_mix_first_samples_streamed():
    ds, report = load_data("HuggingFaceH4/llava-instruct-mix-vsft", split="train[:3]", streaming=True)
    assert report.n_samples == 3 and ds["source_index"] == [0, 1, 2]
    for s in ds:
        placeholders = sum(it["type"] == "image" for t in s["messages"] for it in t["content"])
        assert placeholders == len(s["images"]) >= 1 and all(im.mode == "RGB" for im in s["images"])
        assert s["messages"][0]["role"] == "user" and "assistant" in [t["role"] for t in s["messages"]]
    test, _ = load_data("HuggingFaceH4/llava-instruct-mix-vsft", split="test", streaming=True, n=2)
    assert test["source_index"] == [0, 1]


@pytest.mark.online
def test_online_the_cauldron_one_config():
    ds, report = load_data("HuggingFaceM4/the_cauldron", name="ai2d", split="train[:2]", streaming=True)
    assert report.ok and len(ds) == 2
    for s in ds:
        assert s["messages"][0]["content"][0] == {"type": "image"} and s["messages"][1]["role"] == "assistant"
        assert s["messages"][1]["content"][0]["text"].strip()
