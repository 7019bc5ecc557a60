"""Training runs end to end, in their own processes: the demo's accuracy, resume after SIGKILL matching an
uninterrupted run, Ctrl-C saving a checkpoint, a kill in the middle of a checkpoint save, and DDP with two CPU
processes under `accelerate launch`. Faults are injected from the test's own launcher script (slow steps, a save
that hangs), never from vlmnb's code."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlmnb.train import COMPLETE, complete_checkpoints

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}

# The launcher: the `vlmnb` command, with optional faults: VLMNB_TEST_STEP_SLEEP slows every training step;
# VLMNB_TEST_HANG_SAVE_AT=N makes the checkpoint save at step N hang half-way (after the model and optimizer files,
# before the RNG state and trainer state), after writing a flag file the test waits for.
LAUNCHER = textwrap.dedent('''
    import os, sys, time
    import transformers
    step_sleep = float(os.environ.get("VLMNB_TEST_STEP_SLEEP", "0"))
    hang_at = int(os.environ.get("VLMNB_TEST_HANG_SAVE_AT", "0"))
    if step_sleep:
        train_step = transformers.Trainer.training_step
        def slow(self, *a, **k):
            if os.environ.get("VLMNB_TEST_STEP_FILE"): open(os.environ["VLMNB_TEST_STEP_FILE"], "w").write(str(self.state.global_step))
            time.sleep(step_sleep); return train_step(self, *a, **k)
        transformers.Trainer.training_step = slow
    if hang_at:
        save_rng = transformers.Trainer._save_rng_state
        def hang(self, output_dir):
            if self.state.global_step == hang_at:
                open(os.environ["VLMNB_TEST_FLAG"], "w").write(output_dir); time.sleep(600)
            return save_rng(self, output_dir)
        transformers.Trainer._save_rng_state = hang
    from vlmnb.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def write_config(folder: Path, **kw) -> Path:
    cfg = {"base_model": "tiny:smolvlm", "datasets": [{"path": "synthetic:colour_shapes", "n": 96, "seed": 3}],
           "batch_size": 4, "max_steps": 8, "save_steps": 2, "save_total_limit": 5, "learning_rate": 5e-3, "logging_steps": 1,
           "seed": 0, "output_dir": str(folder / "run"), "progress_bar": False, **kw}
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "launch.py").write_text(LAUNCHER)
    return folder / "cfg.yaml"


def start(folder: Path, *args, **env):
    return subprocess.Popen([sys.executable, str(folder / "launch.py"), "train", str(folder / "cfg.yaml"), *args],
                            env={**ENV, **{k: str(v) for k, v in env.items()}}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, proc, timeout=240):
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None: raise AssertionError(f"the run ended early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout: proc.kill(); raise AssertionError("timed out")
        time.sleep(0.1)


def finish(proc, timeout=300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def adapter(folder: Path) -> dict:
    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    write_config(folder)
    finish(start(folder))
    return adapter(folder / "run")


def assert_same_adapter(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    write_config(tmp_path)
    run = tmp_path / "run"
    proc = start(tmp_path, VLMNB_TEST_STEP_SLEEP=0.3)
    wait_for(lambda: (run / "checkpoint-4" / COMPLETE).exists(), proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (run / "adapter_model.safetensors").exists(), "killed before the end"
    resumed = start(tmp_path, "--set", "resume_from_checkpoint=true")
    out = finish(resumed)
    assert "Continuing training from checkpoint" in out or (run / "checkpoint-8" / COMPLETE).exists()
    assert_same_adapter(adapter(run), uninterrupted)


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    write_config(tmp_path, max_steps=50, save_steps=100)
    run = tmp_path / "run"
    step = tmp_path / "step"
    proc = start(tmp_path, VLMNB_TEST_STEP_SLEEP=0.2, VLMNB_TEST_STEP_FILE=step)
    wait_for(lambda: step.exists() and int(step.read_text() or 0) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    done = complete_checkpoints(run)
    assert len(done) == 1 and 0 < int(done[0].name.split("-")[1]) < 50, out[-2000:]
    assert (run / "adapter_model.safetensors").exists() and "interrupted" in out


def test_kill_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, uninterrupted):
    write_config(tmp_path)
    run, flag = tmp_path / "run", tmp_path / "saving"
    proc = start(tmp_path, VLMNB_TEST_HANG_SAVE_AT=4, VLMNB_TEST_FLAG=flag)
    wait_for(flag.exists, proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    partial, previous = run / "checkpoint-4", run / "checkpoint-2"
    assert partial.exists() and not (partial / COMPLETE).exists() and not (partial / "trainer_state.json").exists()
    assert complete_checkpoints(run) == [previous]
    for f in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", COMPLETE):
        assert (previous / f).exists(), f
    finish(start(tmp_path, "--set", "resume_from_checkpoint=true"))
    assert_same_adapter(adapter(run), uninterrupted)


def test_ddp_two_cpu_processes(tmp_path):
    write_config(tmp_path, max_steps=4, save_steps=2)
    run = subprocess.run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vlmnb", "train", str(tmp_path / "cfg.yaml")],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    assert run.stdout.count("finished:") == 1, "only the main process reports"
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["checkpoint-2", "checkpoint-4"]
    assert adapter(tmp_path / "run")


def test_demo_from_the_command_line(tmp_path):
    """`vlmnb train` with no config: the demo, from at most chance to at least 95% exact-match accuracy."""
    run = subprocess.run([str(BIN / "vlmnb"), "train", "--set", "progress_bar=false"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "outputs" / "demo" / "metrics.json").read_text())
    assert metrics["before"]["accuracy"] <= 1 / 6 and metrics["after"]["accuracy"] >= 0.95, metrics
    assert "accuracy" in run.stdout and (tmp_path / "outputs" / "demo" / "loss.png").exists()
