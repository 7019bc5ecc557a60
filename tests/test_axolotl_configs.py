"""Axolotl's own example configs for vision models, as users bring them, through `vlmnb validate` and `vlmnb train`.

Each config below has the keys and values of the example in Axolotl's repository (examples/llava/lora-7b.yaml,
examples/qwen2-vl/lora-7b.yaml, examples/qwen2_5-vl/lora-7b.yaml, examples/gemma3/gemma-3-4b-vision-qlora.yml,
examples/llama-3-vision/lora-11b.yaml, examples/smolvlm2/smolvlm2-2B-lora.yaml), written here from reading them; only
base_model (a tiny model of the family, saved locally), datasets (a local JSONL in the layout of
HuggingFaceH4/llava-instruct-mix-vsft), output_dir and max_steps differ.
"""
from __future__ import annotations
import json, os, subprocess, sys, warnings
from pathlib import Path

import pytest
import yaml

from vlmnb.data import colour_shapes
from vlmnb.load import tiny_model
from vlmnb.train import ConfigError, make_config, preflight, train

VLMNB = Path(sys.executable).parent / "vlmnb"

COMMON = """
processor_type: AutoProcessor
strict: false
skip_prepare_dataset: true
remove_unused_columns: false
sample_packing: false
dataset_prepared_path: last_run_prepared
adapter: lora
lora_model_dir:
pad_to_sequence_len: false
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
wandb_project:
wandb_entity:
wandb_watch:
wandb_name:
wandb_log_model:
gradient_accumulation_steps: 4
micro_batch_size: 1
num_epochs: 1
optimizer: adamw_bnb_8bit
lr_scheduler: cosine
learning_rate: 0.0002
fp16:
tf32: true
gradient_checkpointing: true
logging_steps: 1
warmup_ratio: 0.1
evals_per_epoch: 1
saves_per_epoch: 1
weight_decay: 0.0
"""

EXAMPLES = {  # family: the example's own keys beyond COMMON
    "llava": """
chat_template: llama3_2_vision
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
    field_messages: messages
val_set_size: 0.0
sequence_len: 8192
lora_target_modules: 'language_model.model.layers.[\\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj'
train_on_inputs: false
group_by_length: false
bf16: true
local_rank:
flash_attention: true
eager_attention:
debug:
deepspeed:
fsdp:
fsdp_config:
""",
    "qwen2_vl": """
chat_template: qwen2_vl
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
    field_messages: messages
val_set_size: 0.0
sequence_len: 8192
lora_target_linear: true
train_on_inputs: false
group_by_length: false
bf16: true
local_rank:
flash_attention: true
eager_attention:
debug:
deepspeed:
fsdp:
fsdp_config:
""",
    "gemma3": """
load_in_4bit: true
ddp_find_unused_parameters: true
chat_template: gemma3
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
    field_messages: messages
val_set_size: 0.01
adapter: qlora
sequence_len: 2048
lora_target_modules: 'language_model.model.layers.[\\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj'
micro_batch_size: 2
train_on_inputs: false
group_by_length: false
bf16: true
gradient_checkpointing_kwargs:
  use_reentrant: false
local_rank:
flash_attention: true
eager_attention:
debug:
deepspeed:
fsdp:
fsdp_config:
""",
    "mllama": """
chat_template: llama3_2_vision
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
val_set_size: 0.0
sequence_len: 8192
lora_target_modules: 'model.language_model.layers.[\\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj'
bf16: true
sdp_attention: true
""",
    "smolvlm": """
trust_remote_code: true
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
val_set_size: 0.0
sequence_len: 8192
lora_target_modules: 'model.text_model.layers.[\\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj'
bfloat16: true
flash_attention: true
eager_attention:
""",
}
EXAMPLES["qwen2_5_vl"] = EXAMPLES["qwen2_vl"]  # examples/qwen2_5-vl/lora-7b.yaml: the same keys, chat_template qwen2_vl


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    "Tiny saved models of each family, and a JSONL in llava-instruct-mix-vsft's layout (content items carry `index`)."
    root = tmp_path_factory.mktemp("axolotl")
    (root / "imgs").mkdir()
    lines = []
    for i, s in enumerate(colour_shapes(100, seed=4)):
        s["images"][0].save(root / "imgs" / f"{i}.png")
        q, a = s["messages"][0]["content"][-1]["text"], s["messages"][1]["content"][0]["text"]
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "index": 0, "text": None}, {"type": "text", "index": None, "text": q}]},
            {"role": "assistant", "content": [{"type": "text", "index": None, "text": a}]}], "images": [f"imgs/{i}.png"]}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


def as_run(family: str, local: Path, out: Path, **changes) -> dict:
    "The example with base_model, datasets, output_dir and max_steps pointed at local things, as a user would."
    cfg = {**yaml.safe_load(COMMON), **yaml.safe_load(EXAMPLES[family])}
    model_dir = local / f"model-{family}"
    if not model_dir.exists(): tiny_model(family, model_dir)
    cfg.update(base_model=str(model_dir), output_dir=str(out), max_steps=2)
    cfg["datasets"] = [{**d, "path": str(local / "train.jsonl")} for d in cfg["datasets"]]
    for d in cfg["datasets"]: d.pop("split", None)  # a local JSONL has no splits
    cfg.update(changes)
    return cfg


def write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False)); return path


def validate(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(VLMNB), "validate", str(path)], capture_output=True, text=True, env=env, timeout=300)


RUNNABLE = ["qwen2_vl", "qwen2_5_vl", "gemma3", "mllama", "smolvlm"]


@pytest.mark.parametrize("family", RUNNABLE)
def test_example_validates_and_trains_as_written(family, local, tmp_path):
    path = write(as_run(family, local, tmp_path / "out"), tmp_path / "config.yml")
    checked = validate(path)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "stop token:" in checked.stdout and "note: attention" in checked.stdout or family == "mllama", checked.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(path)
    assert result.metrics["steps"] == 2 and (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_llava_example_names_another_family_template(local, tmp_path):
    "Axolotl's llava example sets chat_template: llama3_2_vision, which is not LLaVA's format: refused, saying why."
    path = write(as_run("llava", local, tmp_path / "out"), tmp_path / "config.yml")
    checked = validate(path)
    assert checked.returncode != 0
    assert "chat_template='llama3_2_vision' is not LLaVA's format" in checked.stderr + checked.stdout
    fixed = write(as_run("llava", local, tmp_path / "out", chat_template="llava"), tmp_path / "fixed.yml")
    assert validate(fixed).returncode == 0


def test_what_the_examples_ask_for_is_honoured(local, tmp_path):
    with warnings.catch_warnings(record=True) as noted:
        warnings.simplefilter("always")
        c = make_config(as_run("gemma3", local, tmp_path / "out"))
    notes = " ".join(str(w.message) for w in noted)
    assert (c.quantization, c.ddp_find_unused_parameters, c.gradient_checkpointing_kwargs) == ("4bit", True, {"use_reentrant": False})
    assert (c.evals_per_epoch, c.saves_per_epoch, c.optimizer, c.chat_template) == (1, 1, "adamw_bnb_8bit", "gemma3")
    assert "processor_type: accepted, no effect" in notes
    pf = preflight(c)
    assert pf.attn_implementation == "sdpa" and any("flash_attention_2 needs the flash-attn package" in n for n in pf.notes)
    assert any("chat_template: gemma3 is Gemma 3's own format" in n for n in pf.notes)
    steps_per_epoch = -(-len(pf.train) // (2 * 4))
    assert pf.save_steps == steps_per_epoch and pf.eval_steps == steps_per_epoch  # one eval and one save an epoch


def test_refusals_name_the_key(local, tmp_path):
    base = as_run("qwen2_vl", local, tmp_path / "out")
    cases = {
        "adapter": ({k: v for k, v in base.items() if k != "adapter"}, "adapter: not set. Axolotl reads a config without `adapter` as full fine-tuning"),
        "packing": ({**base, "sample_packing": True}, "vlmnb does not support: sample_packing"),
        "optimizer": ({**base, "optimizer": "adamw_torchh"}, "optimizer='adamw_torchh' is not one the Trainer knows; did you mean 'adamw_torch'?"),
        "jinja": ({**base, "chat_template_jinja": "{{ messages }}"}, "chat_template_jinja: vlmnb always renders the checkpoint's own chat template"),
        "eos": ({**base, "datasets": [{**base["datasets"][0], "train_on_eos": "last"}]}, "datasets[0].train_on_eos='last'"),
        "plugin": ({**base, "plugins": ["axolotl.integrations.other.OtherPlugin"]}, "not plugins vlmnb knows"),
    }
    for name, (cfg, message) in cases.items():
        with pytest.raises(ConfigError) as e:
            preflight(make_config(cfg))
        assert message in str(e.value), (name, str(e.value))


def test_unknown_keys_one_line_each_no_far_fetched_guess(local, tmp_path):
    base = as_run("qwen2_vl", local, tmp_path / "out")
    with pytest.raises(ConfigError) as e:
        make_config({**base, "learning_rat": 1e-4, "frobnicate": 1})
    lines = str(e.value).splitlines()[1:]
    assert lines == ["  unknown key 'learning_rat'; did you mean 'learning_rate'?", "  unknown key 'frobnicate'"]


def test_speed_only_keys_accepted_with_a_note(local, tmp_path):
    base = as_run("qwen2_vl", local, tmp_path / "out")
    with warnings.catch_warnings(record=True) as noted:
        warnings.simplefilter("always")
        make_config({**base, "plugins": ["axolotl.integrations.liger.LigerPlugin"], "liger_rms_norm": True,
                     "cut_cross_entropy": True, "lora_mlp_kernel": True, "eot_tokens": ["<|im_end|>"], "train_on_eos": "turn"})
    notes = " ".join(str(w.message) for w in noted)
    for key in ("plugins", "liger_rms_norm", "cut_cross_entropy", "lora_mlp_kernel", "eot_tokens", "train_on_eos"):
        assert key in notes, key


def test_wandb_project_is_honoured_or_refused(local, tmp_path):
    import importlib.util
    base = as_run("qwen2_vl", local, tmp_path / "out", wandb_project="vlmnb-test", wandb_name="run-1")
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="wandb_project is set but wandb is not installed"): make_config(base)
    else:
        c = make_config(base)
        assert c.report_to == ["wandb"] and c.wandb == {"project": "vlmnb-test", "name": "run-1"}


def test_example_reads_a_dataset_repository_with_its_split_as_written(local, tmp_path, monkeypatch):
    "The example's dataset entry unchanged (type, split: train[:1%], field_messages) but for its path: a local folder in the"
    " layout of HuggingFaceH4/llava-instruct-mix-vsft, read by `datasets.load_dataset` exactly like the Hub id."
    import datasets as hfd
    from test_data_hub import LLAVA_CARD, LLAVA_FEATURES, llava_row, write_shards
    monkeypatch.setattr(hfd.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    repo = tmp_path / "llava-instruct-mix-vsft"
    colours = ["red", "green", "blue", "yellow", "purple", "cyan"]
    write_shards(repo / "data", "train", [[llava_row(i, [colours[i % 6]]) for i in range(200)]], LLAVA_FEATURES)
    write_shards(repo / "data", "test", [[llava_row(0, ["white"])]], LLAVA_FEATURES)
    (repo / "README.md").write_text(LLAVA_CARD.replace("num_examples: 5\n", "num_examples: 200\n").replace("num_examples: 2\n", "num_examples: 1\n"))
    cfg = as_run("qwen2_vl", local, tmp_path / "out")
    cfg["datasets"] = [{**yaml.safe_load(EXAMPLES["qwen2_vl"])["datasets"][0], "path": str(repo)}]
    assert cfg["datasets"][0]["split"] == "train[:1%]"
    pf = preflight(make_config(cfg))
    assert len(pf.train) == 2  # 1% of 200 rows, as datasets slices it
