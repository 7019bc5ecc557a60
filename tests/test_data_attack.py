"""The data layer under attack (issue 15): hostile and unlucky input fed through the public API, each outcome checked.

Paths that leave the dataset root (absolute, `~`, `../`, symlinks) in every kind of source; URLs that drip, redirect
elsewhere, point into the local network, answer with a web page or declare a bomb; caches that cannot be written;
files that are not files; text that is not UTF-8 or starts with a byte-order mark; inline data too large to decode.
The HTTP servers are ThreadingHTTPServers on 127.0.0.1 started by the tests; nothing else on the network is reached."""
from __future__ import annotations
import base64, io, json, os, socket, struct, threading, time, tracemalloc, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import datasets as hfd
import pytest
from PIL import Image, ImageFile

import vlmnb.data as vd
from vlmnb.data import (DataError, ImagePolicy, ImageProblem, check, fetch_url, load_data, load_samples, open_image,
                        prepare, read_records)

HTML = b"<!doctype html><html><body>Sign in to see this image</body></html>"


# ---------------------------------------------------------------- building blocks

def png_bytes(size=(32, 32), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO(); Image.new("RGB", size, colour).save(buf, format="PNG"); return buf.getvalue()

def save_png(path: Path, size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(size))
    return path

def bomb_png(width=50_000, height=50_000) -> bytes:
    "A tiny PNG whose IHDR declares `width`x`height` pixels (CRC fixed), as a decompression bomb's header does."
    d = bytearray(png_bytes((1, 1)))
    d[16:24] = struct.pack(">II", width, height)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])))  # CRC over chunk type + data
    return bytes(d)

def record(image) -> dict: return {"prompt": "<image>What colour is it?", "completion": "red", "images": [image]}

def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path

def kinds(report) -> list[tuple[int, str]]: return [(p.index, p.kind) for p in report.problems]


class Server:
    "A ThreadingHTTPServer on 127.0.0.1 whose GET requests go to `routes[path](handler, server)`; counts hits per path."
    def __init__(self, routes: dict[str, Callable]):
        self.routes, self.hits, self.stop = routes, {}, threading.Event()
        server = self
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path)
                if route is None: self.send_error(404); return
                try: route(self, server)
                except (BrokenPipeError, ConnectionResetError): pass  # the client gave up: what a deadline does
            def log_message(self, *args): pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True); self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str: return f"http://{host}:{self.port}{path}"

    def close(self):
        self.stop.set(); self.httpd.shutdown(); self.httpd.server_close(); self.thread.join(5)

@pytest.fixture
def serve():
    servers = []
    def make(routes): servers.append(Server(routes)); return servers[-1]
    yield make
    for s in servers: s.close()

def body(content_type: str, data: bytes, length: bool = True):
    def route(h, server):
        h.send_response(200); h.send_header("Content-Type", content_type)
        if length: h.send_header("Content-Length", str(len(data)))
        h.end_headers(); h.wfile.write(data)
    return route

def redirect(location: str, code: int = 302):
    def route(h, server):
        h.send_response(code); h.send_header("Location", location); h.send_header("Content-Length", "0"); h.end_headers()
    return route

def drip_body(h, server):
    "Headers at once, then the body one byte a second: every read is quick, the whole never arrives."
    h.send_response(200); h.send_header("Content-Type", "image/png"); h.send_header("Content-Length", "1000"); h.end_headers()
    for b in png_bytes():
        h.wfile.write(bytes([b])); h.wfile.flush()
        if server.stop.wait(1.0): return

def drip_headers(h, server):
    "The status line itself, one byte a second."
    for b in b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\n":
        h.wfile.write(bytes([b])); h.wfile.flush()
        if server.stop.wait(1.0): return

# ================================================================ 1-2. paths stay inside the root

@pytest.fixture
def ds(tmp_path) -> Path:
    "A dataset folder with one good image, and a file outside it next door."
    save_png(tmp_path/"ds"/"imgs"/"good.png")
    save_png(tmp_path/"outside.png")
    return tmp_path/"ds"

def test_absolute_path_outside_the_root_is_refused(ds):
    outside = ds.parent/"outside.png"
    path = write_jsonl(ds/"data.jsonl", [record("imgs/good.png"), record(str(outside)), record(str(ds/"imgs"/"good.png"))])
    report = check(path)
    assert kinds(report) == [(1, "path_escape")]  # the absolute path inside the root (sample 2) is fine
    msg = report.problems[0].message
    assert repr(str(outside)) in msg and "outside the dataset root" in msg and str(ds.resolve()) in msg
    assert "allow_outside_root=True" in msg

def test_dotdot_escape_is_refused(ds):
    report = check(write_jsonl(ds/"data.jsonl", [record("imgs/../../outside.png"), record("imgs/../imgs/good.png")]))
    assert kinds(report) == [(0, "path_escape")]

def test_home_paths_are_checked_too(ds, monkeypatch):
    monkeypatch.setenv("HOME", str(ds.parent))  # ~/outside.png is the file beside the dataset
    report = check(write_jsonl(ds/"data.jsonl", [record("~/outside.png"), record("~/ds/imgs/good.png")]))
    assert kinds(report) == [(0, "path_escape")]
    assert "'~/outside.png' resolves to " + str((ds.parent/"outside.png").resolve()) in report.problems[0].message

def test_symlinks_that_resolve_outside_are_escapes(ds):
    (ds/"link.png").symlink_to(ds.parent/"outside.png")
    (ds/"inner.png").symlink_to(ds/"imgs"/"good.png")
    (ds.parent/"elsewhere").mkdir(); save_png(ds.parent/"elsewhere"/"a.png")
    (ds/"linked-folder").symlink_to(ds.parent/"elsewhere", target_is_directory=True)
    report = check(write_jsonl(ds/"data.jsonl", [record("link.png"), record("inner.png"), record("linked-folder/a.png")]))
    assert kinds(report) == [(0, "path_escape"), (2, "path_escape")]

def test_symlink_loop_is_a_bad_path_not_a_crash(ds):
    (ds/"loop-a.png").symlink_to(ds/"loop-b.png"); (ds/"loop-b.png").symlink_to(ds/"loop-a.png")
    report = check(write_jsonl(ds/"data.jsonl", [record("loop-a.png"), record("imgs/good.png"), record("gone.png")]))
    assert kinds(report) == [(0, "bad_path"), (2, "missing_file")]
    assert "'loop-a.png' cannot be resolved" in report.problems[0].message

def test_parquet_root_is_the_files_folder(ds, tmp_path, monkeypatch):
    elsewhere = tmp_path/"cwd"; elsewhere.mkdir(); monkeypatch.chdir(elsewhere)  # not the dataset's folder
    rows = [record("imgs/good.png"), record("../outside.png"), record(str(tmp_path/"outside.png"))]
    hfd.Dataset.from_list(rows).to_parquet(str(ds/"train.parquet"))
    assert read_records(ds/"train.parquet")[1] == ds
    assert kinds(check(ds/"train.parquet")) == [(1, "path_escape"), (2, "path_escape")]
    assert kinds(check(ds/"train.parquet", allow_outside_root=True)) == []

def test_save_to_disk_root_is_the_folder(tmp_path, monkeypatch):
    saved = tmp_path/"saved"
    rows = [record("imgs/good.png"), record("../outside.png")]
    hfd.DatasetDict(train=hfd.Dataset.from_list(rows)).save_to_disk(str(saved))
    save_png(saved/"imgs"/"good.png"); save_png(tmp_path/"outside.png")
    monkeypatch.chdir(tmp_path)  # from here "imgs/good.png" would be missing and "../outside.png" would leave tmp_path
    assert read_records(saved, split="train")[1] == saved
    assert kinds(check(saved, split="train")) == [(1, "path_escape")]

def test_a_list_is_rooted_in_the_working_directory(ds, tmp_path, monkeypatch):
    monkeypatch.chdir(ds)
    records = [record("imgs/good.png"), record("../outside.png"), record(str(tmp_path/"outside.png"))]
    assert kinds(check(records)) == [(1, "path_escape"), (2, "path_escape")]
    assert check([record(str(tmp_path/"outside.png"))], root=tmp_path).ok  # root= a folder that holds the images
    report = check(records, allow_outside_root=True)
    assert report.ok and report.notes == [f"2 image paths lie outside the dataset root {ds.resolve()}, accepted because allow_outside_root=True"]

def test_an_in_memory_dataset_with_paths_is_rooted_too(ds, monkeypatch):
    monkeypatch.chdir(ds)
    hf = hfd.Dataset.from_dict({"prompt": ["<image>Colour?"] * 2, "completion": ["red"] * 2,
                                "image": [{"bytes": None, "path": str(ds/"imgs"/"good.png")},
                                          {"bytes": None, "path": str(ds.parent/"outside.png")}]},
                               features=hfd.Features({"prompt": hfd.Value("string"), "completion": hfd.Value("string"),
                                                      "image": hfd.Image(decode=False)}))
    assert kinds(check(hf)) == [(1, "path_escape")]


def test_the_opt_out_is_threaded_and_counted(ds):
    outside = str(ds.parent/"outside.png")
    path = write_jsonl(ds/"data.jsonl", [record(outside), record("imgs/good.png"), record(outside)])
    with pytest.raises(DataError, match=r"sample 0 \[path_escape\]"): prepare(path)
    note = f"2 image paths lie outside the dataset root {ds.resolve()}, accepted because allow_outside_root=True"
    ds_, report = prepare(path, allow_outside_root=True)
    assert len(ds_) == 3 and report.ok and report.notes == [note]
    assert note in report.summary() and note in str(report) and report.to_dict()["notes"] == [note]
    assert check(path, allow_outside_root=True).notes == [note]
    assert load_data(str(path), allow_outside_root=True)[1].notes == [note]
    with pytest.warns(UserWarning, match="2 image paths lie outside the dataset root"):
        load_samples(path, allow_outside_root=True)
    assert "notes" not in check(write_jsonl(ds/"clean.jsonl", [record("imgs/good.png")]), allow_outside_root=True).to_dict()

def test_the_note_is_in_the_error_when_other_samples_fail(ds):
    path = write_jsonl(ds/"data.jsonl", [record(str(ds.parent/"outside.png")), record("imgs/missing.png")])
    with pytest.raises(DataError) as err: prepare(path, allow_outside_root=True)
    assert "1 image path lies outside the dataset root" in str(err.value) and "sample 1 [missing_file]" in str(err.value)


# ================================================================ 3. one deadline per image

@pytest.mark.parametrize("route", [drip_body, drip_headers], ids=["drip-body", "drip-headers"])
def test_slow_drip_hits_the_total_deadline(serve, route):
    srv = serve({"/slow.png": route})
    t0 = time.monotonic()
    report = check([record(srv.url("/slow.png"))], timeout=1.5)
    elapsed = time.monotonic() - t0
    assert kinds(report) == [(0, "url_timeout")]
    assert 1.4 < elapsed < 3.5, elapsed
    assert srv.url("/slow.png") in report.problems[0].message and "within 1.5 s" in report.problems[0].message

def test_fetch_url_deadline_directly(serve):
    srv = serve({"/slow.png": drip_body})
    with pytest.raises(ImageProblem) as err: fetch_url(srv.url("/slow.png"), timeout=1.0)
    assert err.value.kind == "url_timeout"


# ================================================================ 4. redirects

@pytest.mark.parametrize("target", ["ftp://example.com/cat.png", "file:///etc/passwd"])
def test_redirect_to_another_scheme_is_refused(serve, target):
    srv = serve({"/cat.png": redirect(target)})
    report = check([record(srv.url("/cat.png"))])
    assert kinds(report) == [(0, "url_scheme")]
    assert repr(target) in report.problems[0].message and "only http and https" in report.problems[0].message

def test_redirects_are_followed_and_capped(serve):
    routes = {f"/hop/{k}": redirect(f"/hop/{k + 1}", code=301 if k % 2 else 307) for k in range(12)}
    routes["/hop/2"] = redirect("/img.png")          # a short chain, that ends in an image
    routes["/img.png"] = body("image/png", png_bytes())
    routes["/loop/0"] = redirect("/hop/3")            # a long chain: 3 -> 4 -> ... -> 12 (a 404 it never reaches)
    srv = serve(routes)
    report = check([record(srv.url("/hop/0")), record(srv.url("/loop/0"))])
    assert kinds(report) == [(1, "url_redirects")]
    assert f"more than {vd.MAX_REDIRECTS} times" in report.problems[0].message
    assert srv.hits["/hop/7"] == 1 and srv.hits.get("/hop/8", 0) == 0  # the sixth redirect is not followed


# ================================================================ 5. a bomb behind a URL

def test_bomb_header_behind_a_url_is_reported_like_the_file(serve, ds):
    srv = serve({"/bomb.png": body("image/png", bomb_png())})
    (ds/"bomb.png").write_bytes(bomb_png())
    report = check([record(srv.url("/bomb.png")), record("bomb.png"), record("imgs/good.png")], root=ds)
    assert kinds(report) == [(0, "decompression_bomb"), (1, "decompression_bomb")]
    assert srv.url("/bomb.png") in report.problems[0].message


# ================================================================ 6. an unwritable cache

def readonly_dir(tmp_path) -> Path:
    d = tmp_path/"ro"; d.mkdir(); d.chmod(0o500)
    if os.access(d, os.W_OK): pytest.skip("running as root: a read-only folder is still writable")
    return d

@pytest.mark.parametrize("cache", ["file", "readonly", "proc"])
def test_unwritable_cache_warns_once_and_fetches(serve, tmp_path, monkeypatch, cache):
    "VLMNB_CACHE is a file, a read-only folder (not read-only to root), or under /proc (unwritable even to root)."
    if cache == "file": where = tmp_path/"a-file"; where.write_text("not a folder")
    elif cache == "readonly": where = readonly_dir(tmp_path)
    else:
        if not Path("/proc/self").is_dir(): pytest.skip("no /proc")
        where = Path("/proc/vlmnb-cache")
    monkeypatch.setenv("VLMNB_CACHE", str(where))
    monkeypatch.setattr(vd, "_CACHE_WARNED", set())
    srv = serve({"/a.png": body("image/png", png_bytes()), "/b.png": body("image/png", png_bytes(colour=(0, 0, 255)))})
    with pytest.warns(UserWarning, match="cannot be written") as rec:
        report = check([record(srv.url("/a.png")), record(srv.url("/b.png"))])
    assert report.ok, report
    assert len([w for w in rec if "cannot be written" in str(w.message)]) == 1
    assert not list(tmp_path.glob("**/*.tmp"))


# ================================================================ 7. the private-address switch

@pytest.fixture
def image_server(serve):
    return serve({"/img.png": body("image/png", png_bytes()), "/to-private": None})

def test_switch_is_off_by_default(image_server):
    assert check([record(image_server.url("/img.png"))]).ok

@pytest.mark.parametrize("how", ["env", "policy"])
def test_switch_refuses_loopback(image_server, monkeypatch, how):
    if how == "env": monkeypatch.setenv("VLMNB_BLOCK_PRIVATE_URLS", "1")
    report = check([record(image_server.url("/img.png"))], policy=ImagePolicy(block_private_urls=how == "policy"))
    assert kinds(report) == [(0, "url_blocked")]
    assert "resolves to 127.0.0.1, a loopback address" in report.problems[0].message
    assert image_server.hits.get("/img.png", 0) == 0  # refused before connecting

def fake_dns(monkeypatch, names: dict[str, list[str]]):
    "getaddrinfo answers `names` (host -> addresses) itself; other hosts resolve as usual."
    real = socket.getaddrinfo
    def getaddrinfo(host, port, *args, **kwargs):
        if host in names: return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))) for a in names[host]]
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

def test_switch_checks_every_address_a_name_resolves_to(image_server, monkeypatch):
    fake_dns(monkeypatch, {"cdn.test": ["127.0.0.1"], "mixed.test": ["93.184.216.34", "10.0.0.7"]})
    monkeypatch.setenv("VLMNB_BLOCK_PRIVATE_URLS", "1")
    report = check([record(image_server.url("/img.png", "cdn.test")), record(image_server.url("/img.png", "mixed.test"))])
    assert kinds(report) == [(0, "url_blocked"), (1, "url_blocked")]
    assert "host cdn.test resolves to 127.0.0.1" in report.problems[0].message
    assert "host mixed.test resolves to 10.0.0.7, a private address" in report.problems[1].message

def test_switch_checks_every_redirect_hop(image_server, monkeypatch):
    "public.test passes the check; it redirects to private.test, which must be checked again, and refused."
    fake_dns(monkeypatch, {"public.test": ["127.0.0.1"], "private.test": ["127.0.0.2"]})
    monkeypatch.setattr(vd, "_address_refusal", lambda ip: "private" if ip == "127.0.0.2" else None)
    image_server.routes["/to-private"] = redirect(image_server.url("/img.png", "private.test"))
    report = check([record(image_server.url("/img.png", "public.test")), record(image_server.url("/to-private", "public.test"))],
                   policy=ImagePolicy(block_private_urls=True))
    assert kinds(report) == [(1, "url_blocked")]
    assert image_server.hits["/to-private"] == 1 and image_server.hits["/img.png"] == 1  # the first sample only
    assert "host private.test resolves to 127.0.0.2" in report.problems[0].message

def test_switch_refuses_a_url_that_is_already_cached(image_server, monkeypatch):
    url = image_server.url("/img.png")
    assert check([record(url)]).ok  # fetched and cached
    monkeypatch.setenv("VLMNB_BLOCK_PRIVATE_URLS", "1")
    assert kinds(check([record(url)])) == [(0, "url_blocked")]


# ================================================================ 8. reports say what a person needs

def test_a_web_page_is_described_not_echoed(serve):
    srv = serve({"/cat.png": body("text/html; charset=utf-8", HTML)})
    (problem,) = check([record(srv.url("/cat.png"))]).problems
    assert problem.kind == "url_not_image"
    assert f"(HTTP 200, Content-Type text/html; charset=utf-8, {len(HTML)} bytes)" in problem.message
    assert "<html" not in problem.message and "b'" not in problem.message and "Sign in" not in problem.message

def test_a_url_over_the_cap_is_refused(serve):
    big = png_bytes((300, 300))
    srv = serve({"/declared.png": body("image/png", big), "/undeclared.png": body("image/png", big, length=False)})
    policy = ImagePolicy(max_file_bytes=len(big) // 2)
    report = check([record(srv.url("/declared.png")), record(srv.url("/undeclared.png"))], policy=policy)
    assert kinds(report) == [(0, "url_too_large"), (1, "url_too_large")]
    assert f"declares {len(big):,} bytes, over the cap of {len(big) // 2:,} bytes" in report.problems[0].message
    assert check([record(srv.url("/declared.png"))]).ok  # under the default cap

def test_a_server_that_speaks_no_http_is_unreachable_not_a_crash(serve):
    def garbage(h, server): h.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    srv = serve({"/x.png": garbage})
    assert kinds(check([record(srv.url("/x.png"))])) == [(0, "url_unreachable")]

def test_fetch_url_refuses_other_schemes_itself():
    with pytest.raises(ImageProblem) as err: fetch_url("file:///etc/passwd")
    assert err.value.kind == "url_scheme"


# ================================================================ 9-10. encodings

def test_one_line_that_is_not_utf8_is_one_problem(ds):
    lines = [json.dumps(record("imgs/good.png")).encode(),
             json.dumps(record("imgs/good.png")).replace("red", "ros\u00e9").encode("latin-1"),
             json.dumps(record("imgs/good.png")).encode(), b'{"prompt": ', json.dumps(record("missing.png")).encode()]
    path = ds/"data.jsonl"; path.write_bytes(b"\n".join(lines) + b"\n")
    report = check(path)
    assert kinds(report) == [(1, "bad_encoding"), (3, "bad_json"), (4, "missing_file")]
    assert "data.jsonl line 2 is not UTF-8 (byte 0xe9" in report.problems[0].message
    assert report.n_ok == 2

def test_a_json_file_that_is_not_utf8_names_the_file_and_offset(ds):
    path, raw = ds/"data.json", b'[{"prompt": "x",\n  "completion": "ros\xe9"}]'
    path.write_bytes(raw)
    offset = raw.index(b"\xe9")
    with pytest.raises(ValueError, match=rf"data\.json is not UTF-8: byte 0xe9 at byte offset {offset} \(line 2\)"): check(path)
    path.write_bytes(b'[{"prompt": "x",\n  "completion": }]')
    with pytest.raises(ValueError, match=r"data\.json is not valid JSON: Expecting value at line 2, column 17"): check(path)

def test_a_csv_manifest_that_is_not_utf8_names_the_file(ds):
    (ds/"imgs"/"metadata.csv").write_bytes(b"file_name,text\ngood.png,ros\xe9\n")
    with pytest.raises(ValueError, match=r"metadata\.csv is not UTF-8: byte 0xe9 at byte offset 27 \(line 2\)"): check(ds/"imgs")

BOM = b"\xef\xbb\xbf"

@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_a_byte_order_mark_is_skipped(ds, fmt):
    if fmt == "jsonl": (ds/"data.jsonl").write_bytes(BOM + b"".join(json.dumps(record("imgs/good.png")).encode() + b"\n" for _ in range(2)))
    if fmt == "json": (ds/"data.json").write_bytes(BOM + json.dumps([record("imgs/good.png")] * 2).encode())
    if fmt == "csv":
        (ds/"imgs"/"metadata.csv").write_bytes(BOM + b"file_name,text\ngood.png,red\ngood.png,red\n")
    samples, report = prepare(ds/"imgs" if fmt == "csv" else ds/f"data.{fmt}")
    assert report.ok and report.n_samples == 2, report
    assert [len(s["images"]) for s in samples] == [1, 1]  # the first column is file_name, not "\ufefffile_name"

@pytest.mark.parametrize("line", ["[" * 100_000 + "]" * 100_000, '{"n": ' + "1" * 5000 + "}"], ids=["deep", "long-int"])
def test_hostile_json_lines_are_bad_json(ds, line):
    path = ds/"data.jsonl"; path.write_text(json.dumps(record("imgs/good.png")) + "\n" + line + "\n")
    assert kinds(check(path)) == [(1, "bad_json")]


# ================================================================ 11. files that are not files

def run_bounded(fn, seconds=5.0):
    "Run `fn` in a thread; fail (instead of hanging the suite) if it blocks."
    out = {}
    def target():
        try: out["value"] = fn()
        except BaseException as e: out["error"] = e
    t = threading.Thread(target=target, daemon=True); t.start(); t.join(seconds)
    assert not t.is_alive(), "blocked: a non-regular file was opened"
    if "error" in out: raise out["error"]
    return out["value"]

@pytest.fixture
def specials(ds):
    os.mkfifo(ds/"pipe.png")
    (ds/"folder.png").mkdir()
    sock = socket.socket(socket.AF_UNIX); sock.bind(str(ds/"sock.png"))
    yield ds
    sock.close()

@pytest.mark.parametrize("name, says", [("folder.png", "is a directory"), ("pipe.png", "is a FIFO"),
                                        ("sock.png", "is a socket"), ("/dev/zero", "is a character device")])
def test_non_regular_files_are_named_and_never_opened(specials, name, says):
    report = run_bounded(lambda: check([record(name), record("imgs/good.png")], root=specials, allow_outside_root=True))
    assert kinds(report) == [(0, "not_a_file")]
    assert says in report.problems[0].message

def test_a_fifo_is_not_opened_when_a_sample_is_read(specials):
    ds_, _ = prepare([record("pipe.png")], root=specials, check_images=False)
    with pytest.raises(ImageProblem, match="is a FIFO"): run_bounded(lambda: ds_[0])


# ================================================================ 12. size caps, before decoding

def test_base64_over_the_cap_is_refused_before_decoding(monkeypatch):
    decoded = []
    real = base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda s, *a, **k: decoded.append(len(s)) or real(s, *a, **k))
    data = base64.b64encode(png_bytes((64, 64)) + b"\0" * 3000).decode()
    records = [record({"base64": data}), record("data:image/png;base64," + data), record({"base64": base64.b64encode(png_bytes()).decode()})]
    report = check(records, policy=ImagePolicy(max_file_bytes=2000))
    assert kinds(report) == [(0, "image_too_large"), (1, "image_too_large")]
    assert "base64 image data is" in report.problems[0].message and "over the cap of 2,000 bytes (ImagePolicy.max_file_bytes)" in report.problems[0].message
    assert len(decoded) == 1  # only the small one was decoded

def test_a_huge_base64_string_costs_no_copy():
    "45 million base64 characters (33.75 MB decoded, over the default 32 MiB): refused while tracemalloc sees < 8 MB allocated."
    records = [record("data:image/png;base64," + "A" * 45_000_000)]
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        report = check(records)
        _, peak = tracemalloc.get_traced_memory()
    finally: tracemalloc.stop()
    assert kinds(report) == [(0, "image_too_large")]
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert time.perf_counter() - t0 < 3

def test_raw_bytes_over_the_cap_are_refused():
    big = png_bytes((64, 64))
    report = check([record(big), record({"bytes": big, "path": "x.png"}), record(png_bytes((20, 20)))],
                   policy=ImagePolicy(max_file_bytes=len(big) - 1))
    assert kinds(report) == [(0, "image_too_large"), (1, "image_too_large")]
    assert "the image bytes is" in report.problems[0].message

def test_a_sparse_9_gib_file_is_refused_from_its_size(ds):
    with open(ds/"huge.png", "wb") as f: f.truncate(9 * 2**30)  # sparse: stat says 9 GiB, the disk holds nothing
    t0 = time.perf_counter()
    report = check(write_jsonl(ds/"data.jsonl", [record("huge.png"), record("imgs/good.png")]))
    assert kinds(report) == [(0, "image_too_large")]
    assert "9,216.0 MiB, over the cap of 32.0 MiB" in report.problems[0].message
    assert time.perf_counter() - t0 < 3

def test_the_file_cap_is_a_policy_field(ds):
    path = write_jsonl(ds/"data.jsonl", [record("imgs/good.png")])
    size = (ds/"imgs"/"good.png").stat().st_size
    assert kinds(check(path, policy=ImagePolicy(max_file_bytes=size - 1))) == [(0, "image_too_large")]
    assert check(path, policy=ImagePolicy(max_file_bytes=size)).ok
    with pytest.raises(ValueError, match="max_file_bytes"): ImagePolicy(max_file_bytes=0)

def test_the_cap_holds_when_samples_are_read_later(ds):
    "Checks skipped at prepare time still apply when the training loop reads the sample."
    ds_, _ = prepare(write_jsonl(ds/"data.jsonl", [record("imgs/good.png")]), check_images=False, policy=ImagePolicy(max_file_bytes=10))
    with pytest.raises(ImageProblem, match="over the cap of 10 bytes"): ds_[0]


# ================================================================ references that used to crash the check

@pytest.mark.parametrize("image", ["data:image/png;base64", {"base64": 12345}, {"base64": b"@@@"}], ids=["no-comma", "int", "bytes"])
def test_malformed_inline_images_are_bad_base64(image):
    assert kinds(check([record(image)])) == [(0, "bad_base64")]

def test_a_decoder_error_of_any_type_is_a_corrupt_image(ds, monkeypatch):
    "Pillow plugins raise more than OSError on hostile files; whatever they raise is that image's problem."
    (ds/"odd.png").write_bytes(png_bytes())
    def load(self): raise struct.error("unpack requires a buffer of 4 bytes")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    (problem,) = open_image_problems(ds/"odd.png")
    assert problem.kind == "corrupt_image" and "unpack requires" in str(problem)

def open_image_problems(path: Path) -> list:
    try: open_image({"bytes": None, "path": str(path)})
    except ImageProblem as e: return [e]
    return []
