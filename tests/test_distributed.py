"""Past one process, on two CPU processes (gloo): FSDP2 through accelerate's own config (vlmnb turns it on for CPU
process groups, which accelerate leaves to GPUs), its adapter equal to the single-process run's, its checkpoints
saved and resumed; and data that mixes text-only samples with image samples while the projector is trained in full,
under DDP and FSDP2, with a first step where one process has no image at all (where other trainers hang or crash
with "unused parameters"). Every run is a process of its own, launched by `accelerate launch`."""
import json, os, random, shutil, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from vlmnb.train import complete_checkpoints

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
TOL = 1e-4  # largest absolute difference allowed between adapters; measured: 0 (LoRA only), 5e-6 (projector in full)

# The launcher: `vlmnb train`, writing for each process and step whether its batch has a real image (one whose tokens
# are attended to; the blank image of an image-free batch is not).
LAUNCHER = textwrap.dedent('''
    import json, os, sys
    import torch, transformers
    step = transformers.Trainer.training_step
    def logged(self, model, inputs, *a, **k):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        vision = torch.isin(ids, torch.tensor(self.data_collator.collator.vision_ids)) & mask.bool()
        with open(os.environ["VLMNB_TEST_LOG"], "a") as f:
            f.write(json.dumps({"rank": int(os.environ.get("RANK", 0)), "step": self.state.global_step, "images": bool(vision.any()),
                                "fsdp": self.is_fsdp_enabled, "sharded": type(next(model.parameters())).__name__}) + "\\n")
        return step(self, model, inputs, *a, **k)
    transformers.Trainer.training_step = logged
    from vlmnb.cli import main
    sys.exit(main(sys.argv[1:]))
''')

FSDP2 = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "num_machines": 1, "num_processes": 2, "machine_rank": 0,
         "mixed_precision": "no", "use_cpu": True,
         "fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                         "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer", "fsdp_state_dict_type": "FULL_STATE_DICT",
                         "fsdp_reshard_after_forward": True, "fsdp_cpu_ram_efficient_loading": False, "fsdp_offload_params": False,
                         "fsdp_activation_checkpointing": False}}


def write(folder: Path, data=None, **kw) -> Path:
    cfg = {"base_model": "tiny:smolvlm", "datasets": [{"path": "synthetic:colour_shapes", "n": 96, "seed": 3}] if data is None else [{"path": str(data)}],
           "batch_size": 4, "max_steps": 8, "save_steps": 4, "save_total_limit": 5, "learning_rate": 5e-3, "logging_steps": 1,
           "seed": 0, "output_dir": str(folder/"run"), "progress_bar": False, **kw}
    folder.mkdir(parents=True, exist_ok=True)
    (folder/"cfg.yaml").write_text(yaml.safe_dump(cfg))
    (folder/"launch.py").write_text(LAUNCHER)
    (folder/"fsdp2.yaml").write_text(yaml.safe_dump(FSDP2))
    return folder/"cfg.yaml"


def run(folder: Path, mode: str, *args) -> list[dict]:
    "One run (`single`, `ddp` or `fsdp`); the per-step log of every process."
    launch = {"single": [sys.executable],
              "ddp": [str(BIN/"accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                      "--mixed_precision", "no", "--dynamo_backend", "no"],
              "fsdp": [str(BIN/"accelerate"), "launch", "--config_file", str(folder/"fsdp2.yaml")]}[mode]
    log = folder/"steps.jsonl"; log.unlink(missing_ok=True)
    out = subprocess.run([*launch, str(folder/"launch.py"), "train", str(folder/"cfg.yaml"), *args], env={**ENV, "VLMNB_TEST_LOG": str(log)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return [json.loads(l) for l in log.read_text().splitlines()]


def adapter(folder: Path) -> dict: return load_file(folder/"run"/"adapter_model.safetensors")


def assert_close(a: dict, b: dict, tol: float = TOL):
    assert a.keys() == b.keys()
    worst = max((x - b[k]).abs().max().item() for k, x in a.items())
    print(f"largest adapter difference: {worst:.2e} (tolerance {tol:.0e})")
    assert worst <= tol, f"adapters differ by up to {worst:.2e} (tolerance {tol:.0e})"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    "The reference: one process, batches of 8 (two processes of 4)."
    folder = tmp_path_factory.mktemp("single")
    write(folder, batch_size=8, lora={"r": 8, "projector": True})
    run(folder, "single")
    return adapter(folder)


def test_fsdp2_on_two_cpu_processes_matches_one_process_and_resumes(tmp_path, single):
    write(tmp_path, lora={"r": 8, "projector": True})
    steps = run(tmp_path, "fsdp")
    assert {s["rank"] for s in steps} == {0, 1} and all(s["fsdp"] and s["sharded"] == "DTensor" for s in steps), "really sharded"
    assert json.loads((tmp_path/"run"/"metrics.json").read_text())["world_size"] == 2
    assert [p.name for p in complete_checkpoints(tmp_path/"run")] == ["checkpoint-4", "checkpoint-8"]
    fsdp = adapter(tmp_path)
    assert_close(fsdp, single)
    # resume: the run as if it had stopped after its step-4 checkpoint; it must end where the uninterrupted run ended
    shutil.rmtree(tmp_path/"run"/"checkpoint-8")
    for f in ("adapter_model.safetensors", "metrics.json"): (tmp_path/"run"/f).unlink()
    resumed = run(tmp_path, "fsdp", "--set", "resume_from_checkpoint=true")
    assert min(s["step"] for s in resumed) == 4
    assert_close(adapter(tmp_path), fsdp, tol=1e-6)


def mixed_data(folder: Path, n_text: int = 31) -> Path:
    "Text-only samples and one image sample, the longest: length grouping puts it first, so the first step's other batch has none."
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (220, 30, 30)).save(folder/"red.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour is the square?"}, {"role": "assistant", "content": "red"}], "images": ["red.png"]}]
    rows += [{"messages": [{"role": "user", "content": f"Repeat the number {i}."}, {"role": "assistant", "content": f"{i}"}]} for i in range(n_text)]
    random.Random(0).shuffle(rows)
    (folder/"mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder/"mixed.jsonl"


@pytest.fixture(scope="module")
def mixed_single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed_single")
    write(folder, mixed_data(folder/"data"), batch_size=4, lora={"r": 8, "projector": True})
    steps = run(folder, "single")
    return adapter(folder), steps


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_text_only_and_image_batches_with_the_projector_trained(tmp_path, mode, mixed_single):
    write(tmp_path, mixed_data(tmp_path/"data"), batch_size=2, lora={"r": 8, "projector": True})
    steps = run(tmp_path, mode)
    first = {s["rank"]: s["images"] for s in steps if s["step"] == 0}
    assert first == {0: True, 1: False}, f"the first step has an image on one process only: {first}"
    assert sum(not s["images"] for s in steps) >= 8, "and many steps have none"
    assert_close(adapter(tmp_path), mixed_single[0])


def test_the_preflight_turns_keep_vision_on_only_where_needed(tmp_path, monkeypatch):
    from vlmnb.train import ConfigError, make_config, preflight
    data = mixed_data(tmp_path/"data", n_text=5)
    base = {"base_model": "tiny:smolvlm", "datasets": [{"path": str(data)}], "output_dir": str(tmp_path/"run")}
    pf = preflight(make_config({**base, "lora": {"projector": True}}))
    assert pf.keep_vision and any("5 text-only samples while the projector is trained" in n for n in pf.notes)
    assert not preflight(make_config(base)).keep_vision, "the language model only: nothing to keep"
    assert not preflight(make_config({**base, "lora": {"projector": True}, "packing": True})).keep_vision  # one process: not needed
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="packing: 5 text-only samples while the projector is trained"):
        preflight(make_config({**base, "lora": {"projector": True}, "packing": True}))


def test_mllama_cross_attention_counts_as_the_vision_side(tmp_path):
    "Mllama's cross-attention layers run only when a batch has an image: training them with text-only samples needs the blank image too."
    from vlmnb.train import make_config, preflight
    data = mixed_data(tmp_path/"data", n_text=3)
    base = {"base_model": "tiny:mllama", "datasets": [{"path": str(data)}], "output_dir": str(tmp_path/"run")}
    pf = preflight(make_config({**base, "lora": {"cross_attention": True}}))
    assert pf.keep_vision and any("while the cross-attention is trained" in n for n in pf.notes)
    assert not preflight(make_config(base)).keep_vision
