"""A corpus of bad samples, one per problem kind, fed through `check` and `load_samples`.

Every bad sample sits in a JSONL file next to real image files made with PIL; each must be reported with the
right kind at the right index and a message that names what is wrong (the file, the URL, the limit)."""
from __future__ import annotations
import io, json, random, re, struct, zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from vlmnb.data import DataError, DataReport, check, load_samples, prepare

HTML = b"<!doctype html><html><body>Not an image</body></html>"
RED = (200, 30, 30)


# ---------------------------------------------------------------- building blocks

def save_png(path: Path, size=(32, 32), colour=RED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path

def noise(size=(64, 64), seed=0) -> Image.Image:
    rnd = random.Random(seed)
    return Image.frombytes("RGB", size, rnd.randbytes(size[0] * size[1] * 3))

def sample(*images: str, prompt="What colour is it?", answer="red") -> dict:
    "A prompt/completion record with one `<image>` tag per image."
    return {"prompt": "<image>" * len(images) + prompt, "completion": answer, "images": list(images)}

def png_bytes(size=(1, 1)) -> bytes:
    buf = io.BytesIO(); Image.new("RGB", size, RED).save(buf, format="PNG"); return buf.getvalue()

def patch_ihdr(png: bytes, width: int, height: int) -> bytes:
    "`png` with the IHDR chunk claiming `width`x`height` and a valid CRC: a tiny file that declares a huge image."
    d = bytearray(png)
    assert d[12:16] == b"IHDR"
    d[16:24] = struct.pack(">II", width, height)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])))  # CRC over chunk type + data
    return bytes(d)

def write_jsonl(path: Path, lines: list) -> Path:
    "Records are dumped as JSON; strings are written as they are (to make broken lines)."
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the bad cases

@dataclass
class Ctx:
    root: Path                 # the dataset folder (the JSONL's folder, so the default root)
    url: Callable[[str], str]  # URL of a path on the local server
    port: int                  # a port with nothing listening

@dataclass
class Case:
    id: str
    kind: str
    build: Callable[[Ctx], tuple[object, list[str]]]  # -> (record or raw JSONL line, fragments the message must contain)

def _missing(c):
    return sample("nope.png"), [str(c.root/"nope.png"), "does not exist"]

def _random_bytes(c):
    (c.root/"noise.png").write_bytes(random.Random(1).randbytes(3000))
    return sample("noise.png"), ["noise.png", "not in an image format Pillow reads"]

def _truncated(fmt, name):
    def build(c):
        buf = io.BytesIO(); noise().save(buf, format=fmt); data = buf.getvalue()
        (c.root/name).write_bytes(data[: len(data) // 2])
        return sample(name), [name, "truncated"]
    return build

def _empty(c):
    (c.root/"empty.png").write_bytes(b"")
    return sample("empty.png"), ["empty.png", "0 bytes"]

def _too_small(c):
    save_png(c.root/"tiny.png", (8, 8))
    return sample("tiny.png"), ["8x8", "16"]

def _aspect(c):
    save_png(c.root/"strip.png", (3400, 16))
    return sample("strip.png"), ["3400x16", "200"]

def _bomb_huge(c):
    (c.root/"bomb.png").write_bytes(patch_ihdr(png_bytes(), 100_000, 100_000))
    assert (c.root/"bomb.png").stat().st_size < 100
    return sample("bomb.png"), ["bomb.png"]

def _bomb_policy(c):  # over ImagePolicy.max_image_pixels (64 Mi) but under PIL's own limit
    (c.root/"bomb9k.png").write_bytes(patch_ihdr(png_bytes(), 9000, 9000))
    return sample("bomb9k.png"), ["bomb9k.png", "9000x9000", "max_image_pixels"]

def _bad_base64(c):
    return sample("data:image/png;base64,@@not*base64@@"), ["base64"]

def _url_unreachable(c):
    url = f"http://127.0.0.1:{c.port}/x.png"
    return sample(url), [url]

def _url_not_image(c):
    url = c.url("/page.html")
    return sample(url), [url, "did not return an image"]

def _url_scheme(c):
    return sample("ftp://example.com/x.png"), ["ftp://example.com/x.png", "'ftp'"]

def _path_escape(c):
    save_png(c.root.parent/"outside.png")  # the file exists: the problem is where it is, not that it is missing
    return sample("../outside.png"), ["'../outside.png'", "outside the dataset root"]

def _count_mismatch(c):
    save_png(c.root/"one.png")
    return sample("one.png", prompt="Compare <image> with this one."), ["2 image placeholders but 1 images"]

def _unknown_role(c):
    return {"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}, ["'robot'"]

def _no_assistant(c):
    return {"messages": [{"role": "user", "content": "Hi"}]}, ["no assistant turn"]

def _empty_assistant(c):
    return {"prompt": "How many?", "completion": "   "}, ["turn 1", "empty"]

def _text_not_string(c):
    return {"prompt": "How many?", "completion": 3}, ["turn 1", "int"]

def _bad_json(c):
    return '{"prompt": "How many?", "completion": ', ["data.jsonl", "not valid JSON"]

CASES = [
    Case("missing_file", "missing_file", _missing),
    Case("corrupt_random_bytes", "corrupt_image", _random_bytes),
    Case("corrupt_truncated_png", "corrupt_image", _truncated("PNG", "half.png")),
    Case("corrupt_truncated_jpeg", "corrupt_image", _truncated("JPEG", "half.jpg")),
    Case("empty_file", "empty_file", _empty),
    Case("too_small", "too_small", _too_small),
    Case("aspect_ratio", "aspect_ratio", _aspect),
    Case("decompression_bomb_huge", "decompression_bomb", _bomb_huge),
    Case("decompression_bomb_policy", "decompression_bomb", _bomb_policy),
    Case("bad_base64", "bad_base64", _bad_base64),
    Case("url_unreachable", "url_unreachable", _url_unreachable),
    Case("url_not_image", "url_not_image", _url_not_image),
    Case("url_scheme", "url_scheme", _url_scheme),
    Case("path_escape", "path_escape", _path_escape),
    Case("image_count_mismatch", "image_count_mismatch", _count_mismatch),
    Case("unknown_role", "unknown_role", _unknown_role),
    Case("no_assistant", "no_assistant", _no_assistant),
    Case("empty_assistant", "empty_assistant", _empty_assistant),
    Case("text_not_string", "text_not_string", _text_not_string),
    Case("bad_json", "bad_json", _bad_json),
]
BY_ID = {c.id: c for c in CASES}
IDS = [c.id for c in CASES]


def good(root: Path, k: int) -> dict:
    colour = [(200, 30, 30), (30, 160, 60), (40, 80, 220)][k % 3]
    save_png(root/"good"/f"{k}.png", colour=colour)
    return sample(f"good/{k}.png", answer=["red", "green", "blue"][k % 3])


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server(make_server):
    return make_server({"/page.html": ("text/html; charset=utf-8", HTML)})

@dataclass
class Corpus:
    path: Path
    bad: dict[str, int]   # case id -> index
    fragments: dict[str, list[str]]  # case id -> what its message must contain
    good: list[int]
    report: DataReport

@pytest.fixture(scope="module")
def corpus(tmp_path_factory, server, free_port) -> Corpus:
    "Every bad case once, with good samples before, between and after them; checked once for the module."
    base = tmp_path_factory.mktemp("corpus")
    ctx = Ctx(base/"ds", server.url, free_port())
    ctx.root.mkdir()
    lines, bad, fragments, good_idx = [], {}, {}, []
    def add_good(): good_idx.append(len(lines)); lines.append(good(ctx.root, len(lines)))
    add_good()
    for k, case in enumerate(CASES):
        record, fragments[case.id] = case.build(ctx)
        bad[case.id] = len(lines); lines.append(record)
        if k % 5 == 4: add_good()
    add_good()
    path = write_jsonl(ctx.root/"data.jsonl", lines)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMNB_CACHE", str(base/"cache"))
        report = check(path)
    return Corpus(path, bad, fragments, good_idx, report)

@pytest.fixture
def one_bad(tmp_path, server, free_port):
    "Build a two-sample dataset [good, bad] for a case: (path, fragments)."
    def build(case: Case):
        ctx = Ctx(tmp_path/"ds", server.url, free_port())
        ctx.root.mkdir()
        record, fragments = case.build(ctx)
        return write_jsonl(ctx.root/"data.jsonl", [good(ctx.root, 0), record]), fragments
    return build


# ---------------------------------------------------------------- check()

@pytest.mark.parametrize("case_id", IDS)
def test_check_reports_kind_and_message(corpus, case_id):
    case, index = BY_ID[case_id], corpus.bad[case_id]
    found = [p for p in corpus.report.problems if p.index == index]
    assert [p.kind for p in found] == [case.kind], found
    for frag in corpus.fragments[case_id]: assert frag in found[0].message, (frag, found[0].message)


def test_check_corpus_totals(corpus):
    r = corpus.report
    assert r.n_samples == len(CASES) + len(corpus.good)
    assert r.bad_indices == sorted(corpus.bad.values())
    assert r.n_ok == len(corpus.good)
    assert not r.ok
    assert len(r.problems) == len(CASES)  # one problem per bad sample, none on the good ones
    assert f"{len(corpus.good)} of {r.n_samples} samples ok" in r.summary()


# ---------------------------------------------------------------- load_samples(on_error='raise')

@pytest.mark.parametrize("case_id", IDS)
def test_load_samples_raises_with_kind_and_message(one_bad, case_id):
    case = BY_ID[case_id]
    path, fragments = one_bad(case)
    with pytest.raises(DataError) as err:
        load_samples(path)
    msg = str(err.value)
    assert f"sample 1 [{case.kind}]" in msg
    for frag in fragments: assert frag in msg, (frag, msg)
    assert [(p.index, p.kind) for p in err.value.report.problems] == [(1, case.kind)]
    assert "sample 0" not in msg  # the good sample is not blamed


@pytest.mark.parametrize("case_id", ["too_small", "aspect_ratio"])
def test_size_problems_name_the_file(one_bad, case_id):
    "Like every other image problem, a size problem must say which file it is about, so it can be found and fixed."
    path, _ = one_bad(BY_ID[case_id])
    name = {"too_small": "tiny.png", "aspect_ratio": "strip.png"}[case_id]
    (problem,) = check(path).problems
    assert name in problem.message, problem.message


def test_bad_json_message_points_at_the_right_line(tmp_path):
    "A JSONL error must point at the file's line, not at a position inside the one line that was parsed."
    lines = [good(tmp_path, 0), good(tmp_path, 1), "", good(tmp_path, 2), '{"prompt": "broken"', good(tmp_path, 3)]
    path = write_jsonl(tmp_path/"data.jsonl", lines)  # the broken record is sample 3, on line 5 of the file
    (problem,) = check(path).problems
    assert (problem.index, problem.kind) == (3, "bad_json")
    line_numbers = set(re.findall(r"\bline (\d+)", problem.message))
    assert line_numbers == {"5"}, problem.message


def test_raise_on_whole_corpus_lists_first_ten(corpus):
    with pytest.raises(DataError) as err:
        load_samples(corpus.path)
    msg = str(err.value)
    assert str(corpus.path) in msg
    assert f"and {len(CASES) - 10} more" in msg
    assert "on_error='skip'" in msg
    assert len(err.value.report.problems) == len(CASES)


# ---------------------------------------------------------------- on_error='skip'

def test_skip_keeps_exactly_the_good_samples(corpus):
    ds, report = prepare(corpus.path, on_error="skip")
    assert report.skipped == sorted(corpus.bad.values())
    assert len(ds) == len(corpus.good)
    assert ds["source_index"] == corpus.good
    for i in range(len(corpus.good)):
        s = ds[i]
        (img,) = s["images"]
        assert img.mode == "RGB" and img.size == (32, 32)
        answer = s["messages"][-1]["content"][0]["text"]
        assert img.getpixel((16, 16)) == {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (40, 80, 220)}[answer]


def test_skip_warns_with_count_and_indices(corpus):
    with pytest.warns(UserWarning, match=rf"skipped {len(CASES)} bad samples") as rec:
        ds = load_samples(corpus.path, on_error="skip")
    assert str(sorted(corpus.bad.values())[:20])[1:-1] in str(rec[0].message)
    assert ds["source_index"] == corpus.good


def test_skip_everything_gives_an_empty_dataset(tmp_path):
    path = write_jsonl(tmp_path/"data.jsonl", [sample("a.png"), {"prompt": "Hi", "completion": ""}])
    with pytest.warns(UserWarning, match="skipped 2 bad samples"):
        ds = load_samples(path, on_error="skip")
    assert len(ds) == 0
    assert {"messages", "images", "source_index"} <= set(ds.column_names)


def test_no_warning_when_nothing_skipped(tmp_path, recwarn):
    path = write_jsonl(tmp_path/"data.jsonl", [good(tmp_path, k) for k in range(3)])
    assert len(load_samples(path, on_error="skip")) == 3
    assert not [w for w in recwarn if "skipped" in str(w.message)]


def test_bad_on_error_value_is_refused(tmp_path):
    path = write_jsonl(tmp_path/"data.jsonl", [good(tmp_path, 0)])
    with pytest.raises(ValueError, match="on_error"):
        load_samples(path, on_error="ignore")


# ---------------------------------------------------------------- a good URL

def test_url_image_loads_and_is_fetched_once(tmp_path, make_server, url_cache, monkeypatch):
    buf = io.BytesIO(); Image.new("RGB", (24, 20), (10, 120, 230)).save(buf, format="PNG")
    srv = make_server({"/img.png": ("image/png", buf.getvalue())})
    url = srv.url("/img.png")
    path = write_jsonl(tmp_path/"data.jsonl", [sample(url, answer="blue")])

    ds = load_samples(path)  # checks (fetches) the image now
    img = ds[0]["images"][0]
    assert img.size == (24, 20) and img.getpixel((5, 5)) == (10, 120, 230)
    assert srv.hits["/img.png"] == 1
    assert list(url_cache.glob("urls/*"))  # the cache is where VLMNB_CACHE says, not in the home folder

    srv.close()
    again = load_samples(path)  # the server is gone: only the cache can answer
    assert again[0]["images"][0].getpixel((5, 5)) == (10, 120, 230)
    assert srv.hits["/img.png"] == 1

    monkeypatch.setenv("VLMNB_CACHE", str(tmp_path/"empty-cache"))  # and without the cache it would fail
    (problem,) = check(path).problems
    assert problem.kind == "url_unreachable" and url in problem.message


def test_non_image_response_is_not_cached(tmp_path, make_server):
    "A URL that once answered with a web page (an error or login page) must be fetched again, not refused forever."
    srv = make_server({"/later.png": ("text/html", HTML)})
    path = write_jsonl(tmp_path/"data.jsonl", [sample(srv.url("/later.png"))])
    assert [p.kind for p in check(path).problems] == ["url_not_image"]
    buf = io.BytesIO(); Image.new("RGB", (20, 20), RED).save(buf, format="PNG")
    srv.routes["/later.png"] = ("image/png", buf.getvalue())  # the server now serves the image
    report = check(path)
    assert report.ok, report
    assert srv.hits["/later.png"] == 2
