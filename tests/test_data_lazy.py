"""A dataset of 10,000 image files must stay lazy: the Arrow table holds paths, and pixels are decoded only when read.

One 512x512 PNG is hard-linked 10,000 times (fast, one inode), so the test costs little disk or time; decoded, the
images would take 10,000 * 512 * 512 * 3 bytes = 7.3 GiB."""
from __future__ import annotations
import gc, json, os, time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmnb.data import load_samples, prepare

N, SIDE = 10_000, 512
DECODED = N * SIDE * SIDE * 3  # bytes the decoded images would take


def rss_mib() -> float:
    "Resident set size of this process, from /proc (psutil is not a dependency)."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    "A JSONL of N prompt/completion samples, each with its own image file (all hard links to one PNG)."
    root = tmp_path_factory.mktemp("big")
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(root/"source.png")
    (root/"img").mkdir()
    lines = []
    for i in range(N):
        os.link(root/"source.png", root/"img"/f"img_{i:05d}.png")
        lines.append(json.dumps({"prompt": f"<image>What is in picture {i}?", "completion": f"Pattern {i}.",
                                 "images": [f"img/img_{i:05d}.png"]}))
    (root/"data.jsonl").write_text("\n".join(lines) + "\n")
    return root/"data.jsonl"


def test_ten_thousand_images_are_not_held_decoded(big):
    gc.collect()
    before = rss_mib()
    t0 = time.perf_counter()
    ds = load_samples(big, check_images=False)
    load_s = time.perf_counter() - t0
    gc.collect()
    after_load = rss_mib()
    assert len(ds) == N

    # the table stores references (paths), not pixels
    raw = ds.with_format(None)
    assert raw[1234]["images"] == [{"bytes": None, "path": str(big.parent/"img"/"img_01234.png")}]
    nbytes = raw.data.nbytes
    assert nbytes < 10 * 2**20, f"Arrow table is {nbytes / 2**20:.1f} MiB"
    assert nbytes < DECODED / 500

    # iterating decodes one sample at a time and lets it go
    t0 = time.perf_counter()
    for k, s in zip(range(200), ds):
        (img,) = s["images"]
        assert img.size == (SIDE, SIDE) and img.mode == "RGB"
        assert s["source_index"] == k
    del s, img
    iter_s = time.perf_counter() - t0
    gc.collect()
    after_iter = rss_mib()

    last = ds[N - 1]
    assert last["images"][0].size == (SIDE, SIDE)
    assert last["messages"][-1]["content"][0]["text"] == f"Pattern {N - 1}."
    assert last["images"][0].getpixel((300, 5)) == (300 % 256, 5, 305 % 256)

    print(f"\nload {load_s:.1f}s, 200 samples {iter_s:.1f}s; RSS +{after_load - before:.0f} MiB after load, "
          f"+{after_iter - after_load:.0f} MiB after iterating; table {nbytes / 2**20:.2f} MiB")
    assert after_load - before < 300, f"RSS grew {after_load - before:.0f} MiB while loading"
    # 200 decoded images kept alive would be 150 MiB: iteration must stay well below that
    assert after_iter - after_load < 100, f"RSS grew {after_iter - after_load:.0f} MiB while iterating"


def test_prepare_checks_300_of_them(big, tmp_path):
    lines = big.read_text().splitlines()[:300]
    sub = big.parent/"first300.jsonl"
    sub.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    ds, report = prepare(sub, check_images=True)
    print(f"\nprepare with check_images on 300 files: {time.perf_counter() - t0:.1f}s")
    assert report.ok and report.n_samples == 300 and report.n_ok == 300
    assert len(ds) == 300 and ds[299]["images"][0].size == (SIDE, SIDE)
    os.unlink(big.parent/"img"/"img_00150.png")  # the check really opens the files: take one away
    try:
        (problem,) = prepare(sub, check_images=True, on_error="skip")[1].problems
        assert (problem.index, problem.kind) == (150, "missing_file") and "img_00150.png" in problem.message
    finally:
        os.link(big.parent/"source.png", big.parent/"img"/"img_00150.png")
