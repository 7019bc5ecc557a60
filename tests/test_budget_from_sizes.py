"""The pre-flight at 100k samples, second part: token counts from image sizes (`token_budget(fast=True)`) equal the
processor's on every zoo architecture, across image sizes and sample shapes; a disagreement falls back to the
processor and says so; samples near max_length are counted by the processor; a whole dataset's count is cached and a
changed image misses; the prepared-data cache (`prepare(cache=True)`) gives back the same data and report while
nothing changed, and misses when a source or an image changes; image sizes after EXIF orientation and the policy."""
import json
import random
import warnings

import pytest
from PIL import Image

import vlmnb.collate as vc
from vlmnb.collate import VLMCollator, token_budget, _CACHED_FIELDS
from vlmnb.data import ImagePolicy, canonical_dataset, image_checks, load_samples, normalise_image, normalised_size, png_bytes, prepare
from vlmnb.load import TINY_ARCHS, tiny_model

warnings.filterwarnings("ignore")
SIDES_W, SIDES_H = (20, 48, 100, 333, 640, 1000, 1500), (17, 64, 200, 480, 900)


def mixed_rows(n: int, seed: int = 0) -> list[dict]:
    "Text-only, one-image, two-image and multi-turn samples with images of many sizes, some answers ending in a newline."
    rng, rows = random.Random(seed), []
    for i in range(n):
        k = i % 4
        sizes = [(rng.choice(SIDES_W), rng.choice(SIDES_H)) for _ in range(k % 3)]
        msgs = [{"role": "user", "content": [{"type": "image"} for _ in sizes] + [{"type": "text", "text": "Describe it. " * (i % 5 + 1)}]},
                {"role": "assistant", "content": [{"type": "text", "text": "An answer" + " more" * (i % 3) + ("\n" if i % 5 == 0 else "")}]}]
        if k == 3: msgs += [{"role": "user", "content": [{"type": "text", "text": "And?"}]}, {"role": "assistant", "content": [{"type": "text", "text": "Then."}]}]
        rows.append({"messages": msgs, "source_index": i,
                     "images": [{"bytes": png_bytes(Image.new("RGB", s, (i % 250, 9, 9))), "path": None} for s in sizes]})
    return rows


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_counts_from_sizes_equal_the_processors(model_type):
    _, processor = tiny_model(model_type)
    collator = VLMCollator(processor, model_type=model_type)
    rows = mixed_rows(48)
    ds = canonical_dataset(rows)
    exact = token_budget(ds, collator, fast=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a disagreement would warn: here there must be none
        fast = token_budget(ds, collator, fast=True)
    assert [[getattr(r, f) for f in _CACHED_FIELDS + ("index", "position")] for r in fast.rows] == \
           [[getattr(r, f) for f in _CACHED_FIELDS + ("index", "position")] for r in exact.rows]
    assert [(p.index, p.kind) for p in fast.problems] == [(p.index, p.kind) for p in exact.problems]
    if model_type == "paligemma":  # its processor writes the text: not counted from sizes; and it takes no sample without an image
        assert "by the processor" in fast.how
        assert [p.index for p in fast.problems] == [r["source_index"] for r in rows if not r["images"]]
        assert {p.kind for p in fast.problems} == {"no_image"}
    else: assert "from image sizes" in fast.how and not fast.problems, fast.how


def test_a_disagreement_falls_back_to_the_processor(monkeypatch):
    _, processor = tiny_model("qwen2_vl")
    collator = VLMCollator(processor, model_type="qwen2_vl")
    ds = canonical_dataset(mixed_rows(24))
    real = vc._sample_row
    def off_by_one(*a):
        row = real(*a)
        if row is not None and row.n_images: row.total += 1
        return row
    monkeypatch.setattr(vc, "_sample_row", off_by_one)
    with pytest.warns(UserWarning, match="counted by the processor instead"):
        got = token_budget(ds, collator, fast=True)
    assert "by the processor" in got.how
    assert [r.total for r in got.rows] == [r.total for r in token_budget(ds, collator, fast=False).rows]


def test_samples_near_max_length_are_counted_by_the_processor(monkeypatch):
    _, processor = tiny_model("qwen2_vl")
    collator = VLMCollator(processor, model_type="qwen2_vl")
    ds = canonical_dataset(mixed_rows(32))
    exact = token_budget(ds, collator, fast=False)
    limit = sorted(r.total for r in exact.rows)[16]
    near = [r.position for r in exact.rows if abs(r.total - limit) <= vc.NEAR]
    counted, real = [], vc._budget_row
    monkeypatch.setattr(vc, "_budget_row", lambda c, s, i: counted.append(i) or real(c, s, i))
    fast = token_budget(ds, collator, max_length=limit, fast=True)
    assert set(near) <= set(counted), "every sample within NEAR tokens of max_length went through the processor"
    assert [(r.total, r.fix) for r in fast.over] == [(r.total, r.fix) for r in token_budget(ds, collator, max_length=limit, fast=False).over]


def write_files(folder, n, sides=(40, 56, 72, 300)):
    (folder/"img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (sides[i % len(sides)], 40), (i % 250, 20, 20)).save(folder/"img"/f"{i}.png")
        lines.append({"messages": [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "red"}],
                      "images": [f"img/{i}.png"]})
    (folder/"d.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
    return folder/"d.jsonl"


def test_a_whole_count_is_cached_and_a_changed_image_misses(tmp_path, monkeypatch):
    _, processor = tiny_model("qwen2_vl")
    collator = VLMCollator(processor, model_type="qwen2_vl")
    data, db = write_files(tmp_path, 20), tmp_path/"c.sqlite"
    first = token_budget(load_samples(data), collator, cache=db, fast=True)
    assert "from image sizes" in first.how
    monkeypatch.setattr(vc, "collapsed_counts", lambda *a: (_ for _ in ()).throw(AssertionError("counted again")))
    second = token_budget(load_samples(data), collator, cache=db, fast=True)
    assert "counted before" in second.how and second.to_dict() == first.to_dict()
    Image.new("RGB", (500, 90)).save(tmp_path/"img"/"5.png")  # bigger: more tokens, and a new identity
    with pytest.raises(AssertionError, match="counted again"): token_budget(load_samples(data), collator, cache=db, fast=True)
    monkeypatch.undo()
    third = token_budget(load_samples(data), collator, cache=db, fast=True)
    assert third.rows[5].image_tokens > first.rows[5].image_tokens
    assert third.to_dict() == token_budget(load_samples(data), collator, fast=False).to_dict()


def test_prepared_data_comes_back_while_nothing_changed(tmp_path, monkeypatch):
    data = write_files(tmp_path, 30)
    (tmp_path/"img"/"7.png").write_bytes((tmp_path/"img"/"7.png").read_bytes()[:40])  # cut short
    first, rep1 = prepare(data, on_error="skip", cache=True)
    assert rep1.bad_indices == [7]
    read = []
    import vlmnb.data as vd
    monkeypatch.setattr(vd, "read_records", lambda *a, **k: read.append(1) or (_ for _ in ()).throw(AssertionError("read again")))
    second, rep2 = prepare(data, on_error="skip", cache=True)
    assert read == [] and "unchanged since their check" in rep2.image_check
    assert second.with_format(None).to_list() == first.with_format(None).to_list()
    assert (rep2.bad_indices, rep2.skipped, rep2.n_samples) == ([7], [7], 30), "the corrupt image is reported by index again"
    assert second[0]["images"][0].size == (40, 40)  # it decodes as before
    with pytest.raises(vd.DataError, match="sample 7"): prepare(data, cache=True)  # on_error='raise' raises from the cache too
    monkeypatch.undo()
    Image.new("RGB", (50, 50)).save(tmp_path/"img"/"7.png")  # fixed: a new identity, so a miss, and no problem left
    third, rep3 = prepare(data, on_error="skip", cache=True)
    assert rep3.bad_indices == [] and len(third) == 30 and "unchanged" not in rep3.image_check
    data.write_text(data.read_text().replace("What colour?", "Which colour?"))  # a changed source: a miss
    fourth, _ = prepare(data, on_error="skip", cache=True)
    assert fourth[0]["messages"][0]["content"][-1]["text"] == "Which colour?"
    assert prepare(data, on_error="skip", cache=True, policy=ImagePolicy(max_aspect_ratio=2.0))[1].bad_indices == [i for i in range(3, 30, 4) if i != 7]  # other arguments: other keys (7 is 50x50 now)


def test_sizes_after_exif_orientation_and_the_policy(tmp_path):
    img = Image.new("RGB", (60, 30)); exif = img.getexif(); exif[0x0112] = 6  # turned a quarter: shown 30x60
    img.save(tmp_path/"t.jpg", exif=exif)
    got = image_checks([{"bytes": None, "path": str(tmp_path/"t.jpg")}], cache=False).results[0]
    shown = normalise_image(Image.open(tmp_path/"t.jpg"))
    assert got == {"size": list(shown.size)} == {"size": [30, 60]}
    rng = random.Random(0)
    policies = [ImagePolicy(), ImagePolicy("longest_edge", 96), ImagePolicy("pad", (64, 48)), ImagePolicy("stretch", 50),
                ImagePolicy(max_pixels=5000), ImagePolicy(min_pixels=90000), ImagePolicy("longest_edge", 300, max_pixels=20000)]
    for _ in range(40):
        size = (rng.randint(16, 700), rng.randint(16, 700))
        for p in policies: assert normalised_size(size, p) == normalise_image(Image.new("RGB", size), p).size, (size, p)


@pytest.mark.online
@pytest.mark.parametrize("model_type", [a for a in TINY_ARCHS if a != "paligemma"])
def test_real_processors_count_from_sizes_as_they_count(model_type):
    "The registry's example checkpoint's own processor and template: the count from sizes equals the processor's."
    from vlmnb.load import ARCHS, LoadError, load_processor
    arch = ARCHS[model_type]
    try: processor = load_processor(arch.example, arch=arch)
    except (LoadError, OSError) as e: pytest.skip(f"{arch.example} cannot be loaded here (gated, needs a login, or offline): {e}")
    collator = VLMCollator(processor, arch=arch)
    ds = canonical_dataset(mixed_rows(24, seed=1))
    exact = token_budget(ds, collator, fast=False)
    fast = token_budget(ds, collator, fast=True)
    assert [[getattr(r, f) for f in _CACHED_FIELDS] for r in fast.rows] == [[getattr(r, f) for f in _CACHED_FIELDS] for r in exact.rows]
    assert "from image sizes" in fast.how, fast.how


def test_counting_in_processes_gives_the_same_rows(monkeypatch):
    "Chunks of samples counted in forked processes (as for 100k samples) come back in order and equal to the processor's."
    _, processor = tiny_model("qwen2_vl")
    collator = VLMCollator(processor, model_type="qwen2_vl")
    ds = canonical_dataset(mixed_rows(40))
    monkeypatch.setattr(vc, "COUNT_CHUNK", 6)  # 7 chunks over the cores
    fast = token_budget(ds, collator, fast=True)
    exact = token_budget(ds, collator, fast=False)
    assert [[getattr(r, f) for f in _CACHED_FIELDS + ("index", "position")] for r in fast.rows] == \
           [[getattr(r, f) for f in _CACHED_FIELDS + ("index", "position")] for r in exact.rows]
