#!/usr/bin/env python
"""How long the pre-flight takes on a large dataset: data check (every image opened) and token budget (every sample
counted), first with an empty cache, then again over the same files, each in a process of its own.

    python bench/preflight.py                          # 100,000 samples, images on disk, the tiny SmolVLM's processor
    python bench/preflight.py --samples 10000 --model tiny:qwen2_vl
    python bench/preflight.py --json bench/results/preflight.json

The samples are the package's synthetic colour-shape images at several sizes, written once as PNG files beside a JSONL
file (kept in --workdir between runs); a few of them are cut short on purpose, and the run checks that exactly those
samples are reported, by index, before training would start.

Before the runs, every file is read once (timed and printed, not counted): the runs then measure vlmnb's work, not
the disk. Data written or downloaded a moment ago is in the page cache anyway; on a cold disk add the time printed.
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

SIDES = (48, 64, 96, 128, 160, 224)  # image sides, in turn


def make_data(folder: Path, n: int, corrupt: list[int]) -> Path:
    "n samples, one image file each (sides cycling through SIDES), and a JSONL file naming them; idempotent."
    jsonl = folder/"samples.jsonl"
    if jsonl.exists() and json.loads((folder/"made.json").read_text()) == {"n": n, "corrupt": corrupt}: return jsonl
    from vlmnb.data import colour_shapes
    (folder/"images").mkdir(parents=True, exist_ok=True)
    lines = []
    for k, side in enumerate(SIDES):
        ids = list(range(k, n, len(SIDES)))
        ds = colour_shapes(len(ids), seed=k, size=side).with_format(None)
        for i, row in zip(ids, ds):
            path = folder/"images"/f"{i}.png"
            path.write_bytes(row["images"][0]["bytes"])
            lines.append((i, {"messages": row["messages"], "images": [f"images/{i}.png"]}))
    for i in corrupt:
        p = folder/"images"/f"{i}.png"; p.write_bytes(p.read_bytes()[:40])
    jsonl.write_text("\n".join(json.dumps(r) for _, r in sorted(lines, key=lambda x: x[0])) + "\n")
    (folder/"made.json").write_text(json.dumps({"n": n, "corrupt": corrupt}))
    return jsonl


def once(a) -> dict:
    "One pre-flight in this process: seconds for the data check and for the rest (token budget and other checks)."
    from vlmnb.train import make_config, preflight, run_data
    c = make_config({"base_model": a.model, "datasets": [{"path": a.jsonl}], "on_bad_data": "skip",
                     "output_dir": str(Path(a.workdir)/"run"), "overwrite_output_dir": True})
    t0 = time.perf_counter()
    data = run_data(c)
    t1 = time.perf_counter()
    pf = preflight(c, data=data)
    t2 = time.perf_counter()
    bad = sorted({p.index for r in data[2] for p in r.problems})
    return {"data_s": t1 - t0, "budget_s": t2 - t1, "total_s": t2 - t0, "reported": bad, "kept": len(pf.train),
            "image_check": data[2][0].image_check, "budget": pf.budget.summary(), "counted": pf.budget.how}


def read_all(folder: Path) -> float:
    "Read every file under `folder` once (into the page cache); seconds taken."
    t = time.perf_counter()
    for root, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh: fh.read()
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--model", default="tiny:smolvlm")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir())/"vlmnb-bench-preflight"))
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--cold", action="store_true", help="empty the page cache before the first run instead of reading the files (needs root)")
    p.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--jsonl", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.once: print("RESULT " + json.dumps(once(a))); return 0
    work = Path(a.workdir); work.mkdir(parents=True, exist_ok=True)
    corrupt = sorted({a.samples // 7, a.samples // 2 + 1, a.samples - 3})
    t = time.perf_counter()
    jsonl = make_data(work/f"data-{a.samples}", a.samples, corrupt)
    print(f"data: {a.samples:,} samples in {jsonl.parent} ({time.perf_counter() - t:.0f} s to write or find); cut short: {corrupt}")
    if a.cold:  # the first run reads every file from the disk itself
        subprocess.run(["sync"]); Path("/proc/sys/vm/drop_caches").write_text("3\n"); read_s = None
        print("page cache emptied: the first run reads every file from the disk")
    else:
        read_s = read_all(jsonl.parent)
        print(f"every file read once before the runs: {read_s:.1f} s (not counted in the runs)")
    cache = Path(tempfile.mkdtemp(prefix="vlmnb-cache-"))  # an empty cache: the first run opens every image
    runs = {}
    for name in ("first", "second"):
        out = subprocess.run([sys.executable, __file__, "--once", "--samples", str(a.samples), "--model", a.model,
                              "--workdir", str(work), "--jsonl", str(jsonl)], capture_output=True, text=True,
                             env={**os.environ, "VLMNB_CACHE": str(cache)})
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode or not line: print(out.stdout[-3000:], out.stderr[-3000:]); return 1
        runs[name] = json.loads(line[0][7:])
        r = runs[name]
        print(f"{name} pre-flight: data check {r['data_s']:.1f} s, token budget and the rest {r['budget_s']:.1f} s, "
              f"total {r['total_s']:.1f} s\n  data: {r['image_check']}\n  budget: {r['counted']}; {r['budget']}\n"
              f"  reported samples {r['reported']}")
    ok = all(r["reported"] == corrupt for r in runs.values())
    print(f"corrupt images reported by index before training: {'yes' if ok else 'NO'}")
    result = {"samples": a.samples, "model": a.model, "corrupt": corrupt, "runs": runs, "reported_ok": ok, "files_read_s": read_s, "cold": a.cold,
              "machine": {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                          "python": platform.python_version()},
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip(),
              "versions": {m: __import__("importlib.metadata").metadata.version(m) for m in ("transformers", "datasets", "pillow", "tokenizers")},
              "targets": {"first_s <= 60": runs["first"]["total_s"] <= 60, "second_s <= 5": runs["second"]["total_s"] <= 5}}
    if a.json: Path(a.json).write_text(json.dumps(result, indent=1))
    print(f"first: {runs['first']['total_s']:.1f} s (target 60), second: {runs['second']['total_s']:.1f} s (target 5)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
