"""`vlmnb data check` end to end: the installed console script, run as a subprocess, its exit status and output."""
from __future__ import annotations
import json, os, subprocess, sys
from pathlib import Path

import pytest

from vlmnb.data import colour_shapes

VLMNB = Path(sys.executable).parent/"vlmnb"


def vlmnb(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}  # VLMNB_CACHE comes from the url_cache fixture
    return subprocess.run([str(VLMNB), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def shapes():
    "Five synthetic samples: (messages, PIL image) pairs."
    ds = colour_shapes(5)
    return [(s["messages"], s["images"][0]) for s in ds]

def write_dataset(jsonl: Path, image_dir: Path, shapes, rel: str = "imgs") -> Path:
    "Save the images under `image_dir` and a JSONL whose records refer to them as `rel/<i>.png`."
    image_dir.mkdir(parents=True, exist_ok=True)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (messages, img) in enumerate(shapes):
        img.save(image_dir/f"{i}.png")
        lines.append(json.dumps({"messages": messages, "images": [f"{rel}/{i}.png"]}))
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl

@pytest.fixture
def clean(tmp_path, shapes) -> Path:
    return write_dataset(tmp_path/"ds"/"data.jsonl", tmp_path/"ds"/"imgs", shapes)


def test_console_script_is_installed():
    assert VLMNB.is_file() and os.access(VLMNB, os.X_OK)


def test_clean_dataset_exits_0(clean):
    r = vlmnb("data", "check", clean)
    assert r.returncode == 0, r.stderr
    assert "5 of 5 samples ok" in r.stdout
    assert "Traceback" not in r.stderr


def test_clean_dataset_json(clean):
    r = vlmnb("data", "check", clean, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n_samples": 5, "n_ok": 5, "problems": []}


def test_bad_samples_exit_1_with_json_report(clean):
    lines = clean.read_text().splitlines()
    bad_missing = json.loads(lines[1]); bad_missing["images"] = ["imgs/gone.png"]
    lines[1] = json.dumps(bad_missing)
    lines.insert(3, json.dumps({"messages": [{"role": "user", "content": "Hi"}]}))  # no assistant turn
    clean.write_text("\n".join(lines) + "\n")

    r = vlmnb("data", "check", clean, "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert list(out) == ["n_samples", "n_ok", "problems"]
    assert (out["n_samples"], out["n_ok"]) == (6, 4)
    assert [(p["index"], p["kind"]) for p in out["problems"]] == [(1, "missing_file"), (3, "no_assistant")]
    for p in out["problems"]:
        assert set(p) == {"index", "kind", "message"}
        assert isinstance(p["index"], int) and isinstance(p["message"], str) and p["message"]
    assert "gone.png" in out["problems"][0]["message"]

    text = vlmnb("data", "check", clean)  # the same, as text
    assert text.returncode == 1
    assert "4 of 6 samples ok" in text.stdout and "sample 1 [missing_file]" in text.stdout


def test_root_redirects_relative_paths(tmp_path, shapes):
    jsonl = write_dataset(tmp_path/"meta"/"data.jsonl", tmp_path/"store"/"imgs", shapes)  # images not beside the JSONL
    r = vlmnb("data", "check", jsonl, "--json")
    assert r.returncode == 1
    assert {p["kind"] for p in json.loads(r.stdout)["problems"]} == {"missing_file"}

    r = vlmnb("data", "check", jsonl, "--root", tmp_path/"store", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["n_ok"] == 5


def test_relative_root_is_taken_from_the_working_directory(tmp_path, shapes):
    jsonl = write_dataset(tmp_path/"meta"/"data.jsonl", tmp_path/"store"/"imgs", shapes)
    r = vlmnb("data", "check", "meta/data.jsonl", "--root", "store", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_min_side_option(clean):
    r = vlmnb("data", "check", clean, "--min-side", "100", "--json")  # colour_shapes images are 64x64
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["n_ok"] == 0 and {p["kind"] for p in out["problems"]} == {"too_small"}


def test_missing_source_exits_2(tmp_path):
    missing = tmp_path/"nowhere"/"data.jsonl"
    r = vlmnb("data", "check", missing)
    assert r.returncode == 2
    assert str(missing) in r.stderr and "does not exist" in r.stderr
    assert r.stderr.startswith("vlmnb: error:")
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
