"""The output-folder contract and complete resumes, each case fed for real: a second run into a finished run's folder,
two runs at once, a read-only and a full disk (real tmpfs mounts), a checkpoint truncated after it was written, an
image deleted in the middle of training, SIGTERM, a sample longer than the model's context, and resumes that must
equal uninterrupted runs (Mllama's gates and the loss history included). Faults come from the tests (callbacks, a
launcher script, mounts), never from vlmnb's code."""
import contextlib, json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

from vlmnb.cli import main
from vlmnb.load import tiny_model
from vlmnb.lora import EXTRA_FILE
from vlmnb.train import (COMPLETE, LOCK_FILE, SKIPPED_FILE, ConfigError, RunError, SampleFailed, checkpoint_record,
                         complete_checkpoints, make_config, preflight, train)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}

# The launcher: `vlmnb` with faults. VLMNB_TEST_STEP_SLEEP slows each step and VLMNB_TEST_STEP_FILE records the step;
# VLMNB_TEST_FILL_AT=N fills the disk holding VLMNB_TEST_FILL (a file) when step N begins.
LAUNCHER = textwrap.dedent('''
    import os, sys, time
    import transformers
    sleep, fill_at = float(os.environ.get("VLMNB_TEST_STEP_SLEEP", "0")), int(os.environ.get("VLMNB_TEST_FILL_AT", "0"))
    step_of = transformers.Trainer.training_step
    def step(self, *a, **k):
        if os.environ.get("VLMNB_TEST_STEP_FILE"): open(os.environ["VLMNB_TEST_STEP_FILE"], "w").write(str(self.state.global_step))
        if fill_at and self.state.global_step == fill_at and not os.path.exists(os.environ["VLMNB_TEST_FILL"]):
            with open(os.environ["VLMNB_TEST_FILL"], "wb") as f:
                try:
                    while True: f.write(b"\\0" * 2**20); f.flush()
                except OSError: pass
        time.sleep(sleep); return step_of(self, *a, **k)
    transformers.Trainer.training_step = step
    from vlmnb.cli import main
    sys.exit(main(sys.argv[1:]))
''')


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "smolvlm"
    tiny_model("smolvlm", folder, seed=0)
    return folder


def write_data(folder: Path, n: int = 16, long_text: int = 0) -> Path:
    "A question-answer JSONL with one PNG per sample (colour i % 4); with `long_text`, sample 2 asks a question that long."
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = list(COLOURS)[i % 4]
        Image.new("RGB", (32, 32), COLOURS[name]).save(folder / "img" / f"{i}.png")
        question = "What colour is the image?" if not (long_text and i == 2) else " ".join(["colour"] * long_text)
        rows.append({"image": f"img/{i}.png", "question": question, "answer": name})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "data.jsonl"


def config(base: Path, folder: Path, **kw) -> dict:
    data = kw.pop("data", None) or write_data(folder)
    return {"base_model": str(base), "datasets": [{"path": str(data)}], "batch_size": 4, "max_steps": 8, "save_steps": 2,
            "save_total_limit": 5, "learning_rate": 5e-3, "logging_steps": 1, "seed": 0, "progress_bar": False,
            "output_dir": str(folder / "run"), **kw}


def launch(folder: Path, cfg: dict, **env) -> subprocess.Popen:
    "`vlmnb train` on `cfg` in its own process, through the launcher (slowed, recording its step), output captured."
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "launch.py").write_text(LAUNCHER)
    env = {"VLMNB_TEST_STEP_SLEEP": "0.2", "VLMNB_TEST_STEP_FILE": str(folder / "step"), **env}
    return subprocess.Popen([sys.executable, str(folder / "launch.py"), "train", str(folder / "cfg.yaml")],
                            env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def adapter(folder: Path) -> dict:
    return load_file(folder / "adapter_model.safetensors")


def assert_close(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


class StopAt(TrainerCallback):
    "Stop (with a checkpoint) when a step is reached: the first half of a run that is resumed later."
    def __init__(self, step): self.step = step
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step: control.should_save = True; control.should_training_stop = True


class Slow(TrainerCallback):
    def __init__(self, seconds): self.seconds = seconds
    def on_step_end(self, *a, **kw): time.sleep(self.seconds)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    "A real, small filesystem (a tmpfs mount): for a full disk and a read-only one."
    path.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); these tests need root where mounts are allowed")
    try: yield path
    finally: subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --- a run owns its output folder ---------------------------------------------------------------------------------

def test_a_finished_run_is_not_overwritten_unless_asked(tmp_path, base, capsys):
    first = train(config(base, tmp_path))
    run = first.output_dir
    kept = [p.name for p in complete_checkpoints(run)]
    assert kept == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    before = adapter(run)
    with pytest.raises(ConfigError, match=r"holds a finished run.s adapter and 4 complete checkpoints \(the latest checkpoint-8\).*overwrite_output_dir: true"):
        train(config(base, tmp_path, max_steps=4, learning_rate=1e-3))
    assert_close(adapter(run), before)  # untouched
    # With --overwrite the earlier run is removed first: a shorter run's checkpoints are not rotated away by the
    # earlier run's later steps, and nothing of the earlier run is left to resume by mistake.
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config(base, tmp_path, max_steps=4, learning_rate=1e-3, save_total_limit=2)))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--overwrite"]) == 0
    ids = {checkpoint_record(p)["run_id"] for p in complete_checkpoints(run)}
    assert [p.name for p in complete_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"] and len(ids) == 1
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
    assert "removed" in capsys.readouterr().out


def test_a_resume_must_keep_the_settings_that_shape_the_run(tmp_path, base):
    train(config(base, tmp_path), callbacks=[StopAt(4)])
    for key, value in (("lora", {"r": 4}), ("learning_rate", 1e-3), ("batch_size", 2)):
        with pytest.raises(ConfigError, match=f"other settings.*\n  {key}: "):
            train(config(base, tmp_path, resume_from_checkpoint=True, **{key: value}))
    result = train(config(base, tmp_path, resume_from_checkpoint=True, max_steps=10, logging_steps=2))  # may change
    assert result.metrics["resumed_from"] == 4 and result.metrics["steps"] == 10


def test_two_runs_into_one_folder_at_once(tmp_path, base):
    first = launch(tmp_path, config(base, tmp_path, max_steps=400, save_steps=None))
    try:
        t0 = time.time()
        while not (tmp_path / "step").exists():
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.time() - t0 < 240; time.sleep(0.2)
        with pytest.raises(ConfigError, match=f"is in use by another run \\(pid {first.pid} on "):
            train(config(base, tmp_path, max_steps=400, save_steps=None))
        second = subprocess.run([sys.executable, "-m", "vlmnb", "train", str(tmp_path / "cfg.yaml")], env=ENV,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "in use by another run" in second.stderr
    finally:
        first.kill(); first.wait()
    # the lock dies with its process: a resume after the kill is not refused
    assert (tmp_path / "run" / LOCK_FILE).exists()
    train(config(base, tmp_path, max_steps=2, save_steps=None, overwrite_output_dir=True))


def test_a_read_only_output_dir_fails_before_training(tmp_path, base):
    with tmpfs(tmp_path / "mnt", "8m") as mnt:
        (mnt / "run").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        cfg = config(base, tmp_path, output_dir=str(mnt / "run"))
        with pytest.raises(ConfigError, match="is not writable \\(Read-only file system\\)"):
            preflight(make_config(cfg))
        t0 = time.time()
        with pytest.raises(ConfigError, match="is not writable"):
            train(cfg)
        assert time.time() - t0 < 5, "refused before the model is loaded"


def test_a_disk_too_small_for_the_checkpoints_is_refused_up_front(tmp_path, base):
    with tmpfs(tmp_path / "mnt", "16m") as mnt:
        with pytest.raises(ConfigError, match="MiB free, and this run's checkpoints and adapter need about"):
            preflight(make_config(config(base, tmp_path, output_dir=str(mnt / "run"))))


def test_a_disk_that_fills_during_training(tmp_path, base):
    straight = train(config(base, tmp_path / "straight"))
    with tmpfs(tmp_path / "mnt", "100m") as mnt:
        cfg = config(base, tmp_path, output_dir=str(mnt / "run"))
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        (tmp_path / "launch.py").write_text(LAUNCHER)
        filler = mnt / "filler"
        run = subprocess.run([sys.executable, str(tmp_path / "launch.py"), "train", str(tmp_path / "cfg.yaml")],
                             env={**ENV, "VLMNB_TEST_FILL_AT": "3", "VLMNB_TEST_FILL": str(filler)},
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
        assert "its disk is full" in run.stderr and "the last complete checkpoint is" in run.stderr, run.stderr[-2000:]
        assert "Traceback" not in run.stderr
        assert [p.name for p in (mnt / "run").glob("checkpoint-*")] == ["checkpoint-2"]  # the half-written one removed
        filler.unlink()
        resumed = train(config(base, tmp_path, output_dir=str(mnt / "run"), resume_from_checkpoint=True))
        assert resumed.metrics["resumed_from"] == 2
        assert_close(adapter(mnt / "run"), adapter(straight.output_dir))


# --- resumes that equal uninterrupted runs --------------------------------------------------------------------------

def test_history_and_metrics_survive_a_resume(tmp_path, base):
    straight = train(config(base, tmp_path / "straight"))
    train(config(base, tmp_path / "split"), callbacks=[StopAt(4)])
    resumed = train(config(base, tmp_path / "split", resume_from_checkpoint=True))
    assert_close(adapter(resumed.output_dir), adapter(straight.output_dir))
    history = json.loads((resumed.output_dir / "history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 9))
    for a, b in zip(history, straight.history): assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    m, s = resumed.metrics, straight.metrics
    assert m["steps"] == 8 and m["resumed_from"] == 4
    assert m["train_loss"] == pytest.approx(s["train_loss"], rel=1e-4)
    assert m["train_seconds"] > json.loads((tmp_path / "split" / "run" / "checkpoint-4" / COMPLETE).read_text())["train_seconds"]


def test_mllama_cross_attention_gates_are_in_checkpoints(tmp_path):
    tiny_model("mllama", tmp_path / "mllama", seed=0)
    common = {"lora": {"cross_attention": True, "r": 4}, "learning_rate": 5e-2}
    straight = train(config(tmp_path / "mllama", tmp_path / "straight", **common))
    gates = load_file(straight.output_dir / EXTRA_FILE)
    assert gates and all(v.abs().max() > 0 for v in gates.values()), "the gates trained away from their zero start"
    train(config(tmp_path / "mllama", tmp_path / "split", **common), callbacks=[StopAt(4)])
    assert (tmp_path / "split" / "run" / "checkpoint-4" / EXTRA_FILE).exists()
    resumed = train(config(tmp_path / "mllama", tmp_path / "split", resume_from_checkpoint=True, **common))
    assert_close(load_file(resumed.output_dir / EXTRA_FILE), gates)
    assert_close(adapter(resumed.output_dir), adapter(straight.output_dir))


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, base, capsys):
    train(config(base, tmp_path), callbacks=[StopAt(6)])
    latest = tmp_path / "run" / "checkpoint-6" / "adapter_model.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated after it was written
    with pytest.raises(ConfigError, match="checkpoint-6' is damaged: .*adapter_model.safetensors is 100 bytes"):
        train(config(base, tmp_path, resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-6")))
    result = train(config(base, tmp_path, resume_from_checkpoint=True))
    assert result.metrics["resumed_from"] == 4 and result.metrics["steps"] == 8
    assert "checkpoint-6 is damaged" in capsys.readouterr().out


def test_checkpoints_by_time_and_a_resume_that_finds_nothing(tmp_path, base, capsys):
    result = train(config(base, tmp_path, save_steps=None, save_minutes=0.01, resume_from_checkpoint=True), callbacks=[Slow(0.4)])
    assert "holds no complete checkpoint, so training starts at step 0" in capsys.readouterr().out
    assert len(complete_checkpoints(result.output_dir)) >= 2  # every ~0.6 s, with no save_steps
    assert make_config({"base_model": "x", "datasets": [{"path": "y"}]}).save_minutes == 30  # the default


def sigterm_at(proc: subprocess.Popen, folder: Path, step: int = 3) -> str:
    "Send SIGTERM to a launched run once it has reached `step`; its output once it has exited."
    t0 = time.time()
    while not ((folder / "step").exists() and int((folder / "step").read_text() or 0) >= step):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 240; time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=120)[0]


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, base):
    proc = launch(tmp_path, config(base, tmp_path, max_steps=50, save_steps=None))
    out = sigterm_at(proc, tmp_path)
    assert proc.returncode == 143, out[-3000:]
    done = complete_checkpoints(tmp_path / "run")
    assert len(done) == 1 and 3 <= int(done[0].name.split("-")[1]) < 50 and "interrupted" in out
    assert train(config(base, tmp_path, max_steps=50, save_steps=None, resume_from_checkpoint=True)).metrics["steps"] == 50


# --- bad samples: reported, never lost silently -------------------------------------------------------------------

class DeleteImage(TrainerCallback):
    "Delete an image when a step begins: the file changes after the pre-flight checked it."
    def __init__(self, path: Path, step: int): self.path, self.step = path, step
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.step and self.path.exists(): self.path.rename(self.path.with_suffix(".gone"))


def test_an_image_that_breaks_during_training(tmp_path, base):
    data = write_data(tmp_path, n=8)  # two batches an epoch: sample 5 is read again after step 2
    image = tmp_path / "img" / "5.png"
    with pytest.raises(SampleFailed, match=r"data.jsonl sample 5 failed during training: .*5.png does not exist(.|\n)*A checkpoint of step \d+ is complete"):
        train(config(base, tmp_path, data=data, save_steps=None), callbacks=[DeleteImage(image, 2)])
    assert complete_checkpoints(tmp_path / "run"), "a checkpoint was written on the way out"
    image.with_suffix(".gone").rename(image)
    assert train(config(base, tmp_path, data=data, save_steps=None, resume_from_checkpoint=True)).metrics["steps"] == 8
    # under the skip policy the sample leaves its batch and is reported
    result = train(config(base, tmp_path / "skip", data=data, save_steps=None, on_bad_data="skip"), callbacks=[DeleteImage(image, 2)])
    rows = [json.loads(l) for l in (result.output_dir / SKIPPED_FILE).read_text().splitlines()]
    assert {(r["stage"], r["index"], r["kind"]) for r in rows} == {("training", 5, "missing_file")}
    assert result.metrics["steps"] == 8 and result.metrics["skipped"]["count"] == len(rows) >= 1


def test_skipped_samples_are_written_to_the_output_folder(tmp_path, base, capsys):
    data = write_data(tmp_path, n=12, long_text=3000)
    lines = data.read_text().splitlines()
    lines[4] = '{"image": "img/4.png", "question": "broken'  # not JSON
    (tmp_path / "img" / "7.png").unlink()  # missing
    data.write_text("\n".join(lines) + "\n")
    result = train(config(base, tmp_path, data=data, on_bad_data="skip", max_steps=2))
    rows = [json.loads(l) for l in (result.output_dir / SKIPPED_FILE).read_text().splitlines()]
    assert sorted((r["stage"], r["index"], r["kind"]) for r in rows) == [
        ("data", 4, "bad_json"), ("data", 7, "missing_file"), ("tokens", 2, "over_context")]
    assert all(r["source"] == str(data) and r["message"] for r in rows)
    assert result.metrics["skipped"] == {"count": 3, "by_kind": {"bad_json": 1, "missing_file": 1, "over_context": 1}, "file": SKIPPED_FILE}
    assert "3 bad samples skipped (" in capsys.readouterr().out


def test_a_sample_longer_than_the_context_is_refused_by_index(tmp_path, base):
    data = write_data(tmp_path, n=6, long_text=3000)
    with pytest.raises(ConfigError, match="sample 2 \\[over_context\\]: 3,0\\d\\d tokens, over the model's context of 2,048 positions"):
        preflight(make_config(config(base, tmp_path, data=data)))
    with pytest.raises(ConfigError, match="sample 2 \\[over_context\\]"):  # a cap above the context cuts nothing below it
        preflight(make_config(config(base, tmp_path, data=data, max_length=4096)))
    pf = preflight(make_config(config(base, tmp_path, data=data, max_length=4096, on_bad_data="skip")))
    assert len(pf.train) == 5 and any("max_length=4096 is over the model's context of 2,048" in n for n in pf.notes)
    pf = preflight(make_config(config(base, tmp_path, data=data, max_length=2048, truncation="drop")))
    assert len(pf.train) == 5 and [(r["index"], r["kind"]) for r in pf.skipped] == [(2, "too_long")]


def test_image_paths_outside_the_dataset_folder(tmp_path, base):
    data = write_data(tmp_path / "ds", n=8)
    elsewhere = tmp_path / "elsewhere.png"
    Image.new("RGB", (32, 32), COLOURS["red"]).save(elsewhere)
    rows = data.read_text().splitlines()
    rows[3] = json.dumps({"image": str(elsewhere), "question": "What colour is the image?", "answer": "red"})
    data.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"sample 3 \[path_escape\].*outside the dataset root"):
        preflight(make_config(config(base, tmp_path, data=data)))
    cfg = config(base, tmp_path, data=data)
    cfg["datasets"][0]["allow_outside_root"] = True
    pf = preflight(make_config(cfg))
    assert len(pf.train) == 8 and any("1 image path lies outside the dataset root" in n for n in pf.notes), pf.notes
