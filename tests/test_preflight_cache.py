"""The pre-flight at scale: image checks on every core and cached by file identity (`vlmnb.data.image_checks`), token
budget rows cached by sample, images, policy and collator (`vlmnb.collate.token_budget(cache=...)`), and both through
`prepare` and `preflight`. Every cached answer must equal a fresh one, and anything that changes a count must miss."""
import json
import os
import warnings

import pytest
from PIL import Image

import vlmnb.collate as vc
from vlmnb.collate import VLMCollator, collator_fingerprint, token_budget
from vlmnb.data import (CheckCache, ImagePolicy, check_sample, colour_shapes, image_checks, load_samples, png_bytes,
                        prepare)
from vlmnb.load import tiny_model

warnings.filterwarnings("ignore")


def write_set(folder, n, corrupt=(), sides=(40, 56, 72)):
    (folder/"img").mkdir(parents=True, exist_ok=True)
    ds = colour_shapes(n, seed=0).with_format(None)
    lines = []
    for i, row in enumerate(ds):
        Image.new("RGB", (sides[i % len(sides)], 40), (i % 250, 20, 20)).save(folder/"img"/f"{i}.png")
        lines.append({"messages": row["messages"], "images": [f"img/{i}.png"]})
    for i in corrupt:
        p = folder/"img"/f"{i}.png"; p.write_bytes(p.read_bytes()[:50])
    (folder/"d.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
    return folder/"d.jsonl"


def test_processes_find_what_the_serial_check_finds(tmp_path):
    refs = []
    for i in range(150):
        p = tmp_path/f"{i}.png"
        Image.new("RGB", (8 if i == 40 else 30, 30)).save(p)  # 40: under the minimum side
        refs.append({"bytes": None, "path": str(p)})
    (tmp_path/"7.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    refs.append({"bytes": None, "path": str(tmp_path/"missing.png")})
    checks = image_checks(refs, cache=False, workers=2)
    assert checks.workers == 2 and checks.cached == 0
    serial = [check_sample({"images": [r]}, 0) for r in refs]
    assert [r.get("kind") for r in checks.results] == [p[0].kind if p else None for p in serial]
    assert [i for i, r in enumerate(checks.results) if "kind" in r] == [7, 40, 150]


def test_prepare_reports_the_same_indices_through_blocks_and_cache(tmp_path, monkeypatch):
    data = write_set(tmp_path, 90, corrupt=(5, 61))
    monkeypatch.setattr("vlmnb.data.BLOCK", 32)  # three blocks
    first = prepare(data, on_error="skip")[1]
    assert first.bad_indices == [5, 61] and first.n_samples == 90
    assert "0 from the cache" in first.image_check
    opened = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real(*a, **k))
    second = prepare(data, on_error="skip")[1]
    assert second.to_dict() == first.to_dict()
    assert opened == [], "every result, the corrupt files' too, comes from the cache"
    # stop at n usable samples: only the records read are reported, as before blocks
    ds, rep = prepare(data, on_error="skip", n=10)
    assert len(ds) == 10 and rep.n_samples == 11 and rep.bad_indices == [5]


def test_a_changed_file_is_checked_again(tmp_path):
    p = tmp_path/"a.png"; Image.new("RGB", (30, 30)).save(p)
    ref = [{"bytes": None, "path": str(p)}]
    assert image_checks(ref, cache=tmp_path/"c.db").results == [{"size": [30, 30]}]
    p.write_bytes(b"not an image any more")
    assert image_checks(ref, cache=tmp_path/"c.db").results[0]["kind"] == "corrupt_image"
    p.unlink()
    assert image_checks(ref, cache=tmp_path/"c.db").results[0]["kind"] == "missing_file"


def test_an_unusable_cache_warns_once_and_checks_anyway(tmp_path):
    bad = tmp_path/"not-a-db"; bad.write_bytes(b"this is not SQLite" * 100)
    p = tmp_path/"a.png"; Image.new("RGB", (30, 30)).save(p)
    with pytest.warns(UserWarning, match="check cache"):
        out = image_checks([{"bytes": None, "path": str(p)}] * 2, cache=bad)
    assert out.results == [{"size": [30, 30]}] * 2


def test_budget_rows_come_back_from_the_cache_equal(tmp_path, monkeypatch):
    _, processor = tiny_model("qwen2_vl")
    collator = VLMCollator(processor, model_type="qwen2_vl")
    ds = load_samples(write_set(tmp_path, 12))
    db = tmp_path/"cache.sqlite"
    first = token_budget(ds, collator, max_length=60, cache=db)
    assert len({r.total for r in first.rows}) > 1  # image sizes differ, so counts do
    assert first.to_dict() == token_budget(ds, collator, max_length=60).to_dict()  # the cache changes nothing
    def refuse(*a, **k): raise AssertionError("tokenized again")
    monkeypatch.setattr(vc, "_budget_row", refuse)
    second = token_budget(ds, collator, max_length=60, cache=db)
    assert second.to_dict() == first.to_dict()
    for other in (VLMCollator(processor, model_type="qwen2_vl", train_on_inputs=True),):  # other settings: other keys
        assert collator_fingerprint(other) != collator_fingerprint(collator)
        with pytest.raises(AssertionError, match="tokenized again"): token_budget(ds, other, cache=db)
    with pytest.raises(AssertionError, match="tokenized again"):  # another image policy: other keys
        token_budget(ds, collator, cache=db, policy=ImagePolicy("longest_edge", 32))


def test_a_changed_image_is_counted_again(tmp_path, monkeypatch):
    _, processor = tiny_model("qwen2_vl")
    collator = VLMCollator(processor, model_type="qwen2_vl")
    data = write_set(tmp_path, 4)
    db = tmp_path/"cache.sqlite"
    before = token_budget(load_samples(data), collator, cache=db)
    Image.new("RGB", (200, 120)).save(tmp_path/"img"/"2.png")  # bigger: more image tokens
    counted = []
    real = vc._budget_row
    monkeypatch.setattr(vc, "_budget_row", lambda c, s, i: counted.append(i) or real(c, s, i))
    after = token_budget(load_samples(data), collator, cache=db)
    assert counted == [2]
    assert after.rows[2].image_tokens > before.rows[2].image_tokens
    assert [r.total for r in after.rows] == [r.total for r in token_budget(load_samples(data), collator).rows]


def test_a_second_preflight_reads_its_counts_from_the_cache(tmp_path, monkeypatch):
    from vlmnb.train import make_config, preflight
    data = write_set(tmp_path, 10, corrupt=(3,))
    c = make_config({"base_model": "tiny:qwen2_vl", "datasets": [{"path": str(data)}], "on_bad_data": "skip",
                     "output_dir": str(tmp_path/"run"), "max_length": 80})
    first = preflight(c)
    monkeypatch.setattr(vc, "_budget_row", lambda *a: (_ for _ in ()).throw(AssertionError("tokenized again")))
    second = preflight(c)
    assert second.budget.to_dict() == first.budget.to_dict()
    assert [s["index"] for s in second.skipped] == [3]


def test_the_preflight_benchmark_runs_end_to_end(tmp_path):
    "bench/preflight.py on 60 samples: both runs report the cut-short images by index, and the JSON has what the results page reads."
    import subprocess, sys
    from pathlib import Path
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, str(root/"bench"/"preflight.py"), "--samples", "60", "--workdir", str(tmp_path/"w"),
                          "--json", str(tmp_path/"p.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    res = json.loads((tmp_path/"p.json").read_text())
    assert res["reported_ok"] and res["corrupt"] == [8, 31, 57]
    for r in res["runs"].values(): assert r["reported"] == [8, 31, 57] and r["kept"] == 57
    assert "60 images checked" in res["runs"]["first"]["image_check"] and "(0 from the cache" in res["runs"]["first"]["image_check"]
    assert "60 images unchanged since their check" in res["runs"]["second"]["image_check"]  # the prepared-data cache
    assert "first:" in out.stdout and "second:" in out.stdout
