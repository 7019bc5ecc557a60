"""Axolotl's own example configs for vision models, as users bring them, through `vlmnb validate` and `vlmnb train`.

Each config below has the keys and values of an example in Axolotl's repository as of its July 2026 snapshot
(examples/llava/lora-7b.yaml, qwen2-vl/lora-7b.yaml, qwen2_5-vl/lora-7b.yaml, gemma3/gemma-3-4b-vision-qlora.yml,
llama-3-vision/lora-11b.yaml, smolvlm2/smolvlm2-2B-lora.yaml, pixtral/lora-12b.yml,
mistral-small/mistral-small-3.1-24B-lora.yml, magistral/vision/magistral-small-vision-24B-qlora.yml), written here
from reading them; only base_model (a tiny model of the family, saved locally), datasets (a local JSONL in the layout
of HuggingFaceH4/llava-instruct-mix-vsft), output_dir and max_steps differ. Axolotl has no Qwen3-VL example file; its
docs/multimodal.qmd says to use the Qwen2-VL one with `chat_template: qwen2_vl`, which is the qwen3_vl case here.
Until May 2026 the examples asked for flash-attention with `flash_attention: true`; a draft of the llava example (on
the pixtral_integration branch, December 2024) named `chat_template: llama3_2_vision`. One test keeps that shape.
Axolotl has no example for LLaVA-NeXT, Idefics3 or PaliGemma. Gemma 4 and GLM-4.6V examples, added later, are at the end.
"""
from __future__ import annotations
import importlib.util, json, os, subprocess, sys, warnings
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from vlmnb.cli import main
from vlmnb.data import colour_shapes
from vlmnb.load import ARCHS, has_torchvision, tiny_model
from vlmnb.train import ConfigError, chat_template_note, from_axolotl, make_config, preflight, train

VLMNB = Path(sys.executable).parent / "vlmnb"
FLASH = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()  # flash-attention can run

COMMON = """
processor_type: AutoProcessor
skip_prepare_dataset: true
remove_unused_columns: false
sample_packing: false
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
dataset_prepared_path: last_run_prepared
val_set_size: 0.0
adapter: lora
lora_model_dir:
sequence_len: 8192
pad_to_sequence_len: false
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules: 'model.language_model.layers.[\\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj'
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
bf16: true
fp16:
tf32: true
gradient_checkpointing: true
logging_steps: 1
attn_implementation: flash_attention_2
warmup_ratio: 0.1
evals_per_epoch: 1
saves_per_epoch: 1
weight_decay: 0.0
"""

EXAMPLES = {  # family: the keys in which the example differs from COMMON
    "llava": "chat_template: llava\ndataset_prepared_path:\n",
    "qwen2_vl": "chat_template: qwen2_vl\n",
    "gemma3": """
load_in_4bit: true
ddp_find_unused_parameters: true
chat_template: gemma3
eot_tokens:
  - <end_of_turn>
val_set_size: 0.01
adapter: qlora
sequence_len: 2048
lora_dropout: 0
micro_batch_size: 2
gradient_checkpointing_kwargs:
  use_reentrant: false
""",
    "mllama": "chat_template: llama3_2_vision\ndataset_prepared_path:\nattn_implementation: sdpa\n",
    "smolvlm": "trust_remote_code: true\nlora_target_modules: 'model.text_model.layers.[\\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj'\n",
    "pixtral": "chat_template: pixtral\ndataset_prepared_path:\nspecial_tokens:\n  pad_token: <pad>\n",
    "mistral_small": """
tokenizer_use_mistral_common: true
load_in_8bit: true
datasets:
  - path: Nanobit/text-vision-2k-test
    type: chat_template
val_set_size: 0.01
sequence_len: 2048
gradient_accumulation_steps: 1
micro_batch_size: 2
special_tokens:
""",
    "magistral": """
tokenizer_use_mistral_common: true
plugins:
  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin
load_in_4bit: true
datasets:
  - path: Nanobit/text-vision-2k-test
    type: chat_template
val_set_size: 0.01
adapter: qlora
sequence_len: 2048
gradient_accumulation_steps: 1
special_tokens:
""",
}
EXAMPLES["qwen2_5_vl"] = EXAMPLES["qwen3_vl"] = EXAMPLES["qwen2_vl"]  # the same example; Qwen3-VL as the docs say


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    "A JSONL in llava-instruct-mix-vsft's layout (content items carry `index`); tiny models are saved beside it on demand."
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


def as_run(example: str, local: Path, out: Path, model: str | None = None, **changes) -> dict:
    "The example with base_model, datasets, output_dir and max_steps pointed at local things, as a user would."
    cfg = {**yaml.safe_load(COMMON), **yaml.safe_load(EXAMPLES[example])}
    family = model or example
    model_dir = local / f"model-{family}"
    if not model_dir.exists(): tiny_model(family, model_dir)
    cfg.update(base_model=str(model_dir), output_dir=str(out), max_steps=2)
    cfg["datasets"] = [{**d, "path": str(local / "train.jsonl")} for d in cfg["datasets"]]
    for d in cfg["datasets"]: d.pop("split", None)  # a local JSONL has no splits
    cfg.update(changes)
    return cfg


def write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False)); return path


def validate(path: Path, capsys) -> tuple[int, str]:
    "`vlmnb validate` in this process (the command's own entry point, without a fresh interpreter's start-up)."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["validate", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def noted(fn) -> tuple[object, str]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        result = fn()
    return result, " | ".join(str(x.message) for x in w)


RUNNABLE = ["llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "mllama", "smolvlm"]


@pytest.mark.parametrize("family", RUNNABLE)
def test_example_validates_and_trains_as_written(family, local, tmp_path, capsys):
    path = write(as_run(family, local, tmp_path / "out"), tmp_path / "config.yml")
    code, out = validate(path, capsys)
    assert code == 0 and "ok: the config, data, token budget and LoRA targets check out" in out, out[-2000:]
    assert "stop token:" in out
    if family != "mllama":  # the others ask for flash_attention_2, which needs flash-attn and a GPU
        assert ("note: attention: flash_attention_2 needs the flash-attn package and a CUDA GPU" in out) != FLASH, out
    if family != "smolvlm":  # the SmolVLM2 example names no chat_template
        assert f"chat_template: {yaml.safe_load(EXAMPLES[family])['chat_template']} is {ARCHS[family].name}'s own format" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(path)
    assert result.metrics["steps"] == 2 and (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_the_command_itself(local, tmp_path):
    "One run through the installed `vlmnb` script, in a fresh process, as a user types it."
    path = write(as_run("qwen2_vl", local, tmp_path / "out"), tmp_path / "config.yml")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(VLMNB), "validate", str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chat_template: qwen2_vl is Qwen2-VL's own format" in done.stdout


def test_draft_llava_example_names_another_family_template(local, tmp_path, capsys):
    "A draft of Axolotl's llava example set chat_template: llama3_2_vision (Mllama's format), and the examples used"
    " flash_attention: true until May 2026: the template is refused, saying why and which names are LLaVA's."
    old = {k: v for k, v in as_run("llava", local, tmp_path / "out").items() if k != "attn_implementation"}
    path = write({**old, "chat_template": "llama3_2_vision", "flash_attention": True}, tmp_path / "config.yml")
    code, out = validate(path, capsys)
    assert code != 0
    assert ("chat_template='llama3_2_vision' is not LLaVA's format. vlmnb always renders the checkpoint's own chat template"
            in out and "Remove chat_template, or set it to llava or tokenizer_default." in out), out
    code, out = validate(write({**old, "flash_attention": True}, tmp_path / "fixed.yml"), capsys)
    assert code == 0 and "sdpa is used instead" in out


def test_what_the_examples_ask_for_is_honoured(local, tmp_path):
    c, notes = noted(lambda: make_config(as_run("gemma3", local, tmp_path / "out")))
    assert (c.quantization, c.ddp_find_unused_parameters, c.gradient_checkpointing_kwargs) == ("4bit", True, {"use_reentrant": False})
    assert (c.evals_per_epoch, c.saves_per_epoch, c.optimizer, c.chat_template, c.lora.dropout) == (1, 1, "adamw_bnb_8bit", "gemma3", 0)
    assert "processor_type: accepted, no effect" in notes and "eot_tokens ['<end_of_turn>']: vlmnb labels the token" in notes
    pf = preflight(c)
    assert pf.attn_implementation == "sdpa" and any("flash_attention_2 needs the flash-attn package" in n for n in pf.notes)
    assert any("chat_template: gemma3 is Gemma 3's own format" in n for n in pf.notes)
    steps_per_epoch = -(-len(pf.train) // (2 * 4))
    assert pf.save_steps == steps_per_epoch and pf.eval_steps == steps_per_epoch  # one eval and one save an epoch
    assert make_config(as_run("smolvlm", local, tmp_path / "out")).trust_remote_code is True


def test_mistral_small_and_magistral_examples(local, tmp_path):
    "Mistral 3 needs torchvision: the config reads (8-bit LoRA; 4-bit QLoRA with the cut-cross-entropy plugin noted), and"
    " `vlmnb validate` refuses the model with vlmnb's message where torchvision is missing."
    folder = local / "model-mistral3"
    if not folder.exists():  # a Mistral 3 checkpoint's files; the tiny zoo builds none (its processor needs torchvision)
        folder.mkdir()
        transformers.Mistral3Config(
            text_config=dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, head_dim=8),
            vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, image_size=64, patch_size=16)).save_pretrained(folder)
        (folder / "processor_config.json").write_text(json.dumps({"processor_class": "PixtralProcessor", "image_token": "[IMG]"}))
    small, notes = noted(lambda: make_config(as_run("mistral_small", local, tmp_path / "out", model="mistral3")))
    assert small.quantization == "8bit" and "tokenizer_use_mistral_common: vlmnb tokenizes with the checkpoint's own" in notes
    magistral, notes = noted(lambda: make_config(as_run("magistral", local, tmp_path / "out", model="mistral3")))
    assert magistral.quantization == "4bit" and "plugins ['axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin']: speed" in notes
    if has_torchvision(): pytest.skip("torchvision is installed: the refusal below is for machines without it")
    path = write(as_run("mistral_small", local, tmp_path / "out", model="mistral3"), tmp_path / "config.yml")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([str(VLMNB), "validate", str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == ("vlmnb: error: mistral3 (Mistral 3 (Pixtral)) needs torchvision, which is not installed: "
                                   "its processor imports it. Install torchvision matching your torch, or pick another architecture.")


def test_pixtral_example(local, tmp_path):
    "Pixtral-12B is a llava checkpoint with a Pixtral vision tower and Mistral's template: `pixtral` is its own format,"
    " not llava-1.5's; `special_tokens: {pad_token: <pad>}` names the pad token the tokenizer already has."
    pixtral = transformers.LlavaConfig(vision_config={"model_type": "pixtral"})
    assert chat_template_note("pixtral", ARCHS["llava"], pixtral) == "chat_template: pixtral is Pixtral's own format; vlmnb renders the checkpoint's own template"
    with pytest.raises(ConfigError, match="chat_template='llava' is not Pixtral's format.*set it to pixtral or tokenizer_default"):
        chat_template_note("llava", ARCHS["llava"], pixtral)
    with pytest.raises(ConfigError, match="chat_template='pixtral' is not LLaVA's format"):
        chat_template_note("pixtral", ARCHS["llava"], transformers.LlavaConfig())
    cfg = {k: v for k, v in as_run("pixtral", local, tmp_path / "out", model="llava").items() if k != "chat_template"}
    pf = preflight(make_config(cfg))  # the tiny llava's tokenizer pads with <pad>, as Pixtral-12B's does
    assert "special_tokens: the tokenizer already has {'pad_token': '<pad>'}" in pf.notes


def test_llava_next_template_name_follows_the_checkpoint():
    "LLaVA-NeXT checkpoints differ: llava-v1.6-vicuna ships llava-1.5's template (USER:/ASSISTANT:), the Mistral one [INST]."
    vicuna, mistral = (type("P", (), {"chat_template": t}) for t in ("{{ 'USER: ' }}...{{ 'ASSISTANT:' }}", "[INST] ... [/INST]"))
    assert "llava is LLaVA-NeXT's own format" in chat_template_note("llava", ARCHS["llava_next"], None, vicuna)
    with pytest.raises(ConfigError, match="chat_template='llava' is not LLaVA-NeXT's format"):
        chat_template_note("llava", ARCHS["llava_next"], None, mistral)


def test_special_tokens_are_checked_never_added(local, tmp_path):
    base = {k: v for k, v in as_run("pixtral", local, tmp_path / "out", model="llava").items() if k != "chat_template"}
    pf = preflight(make_config({**base, "special_tokens": {"pad_token": "<unk>"}}))
    assert ("special_tokens: vlmnb pads with the tokenizer's own '<pad>', not '<unk>'; padding carries no label and no "
            "attention, so which token pads does not change training") in pf.notes
    with pytest.raises(ConfigError) as e:
        preflight(make_config({**base, "special_tokens": {"eos_token": "<|im_end|>", "additional_special_tokens": ["<new>"]}}))
    assert str(e.value).splitlines()[1:3] == ["  eos_token: '<|im_end|>', but the tokenizer's is '</s>'",
                                              "  additional_special_tokens: '<new>' is not in the vocabulary"]
    with pytest.raises(ConfigError, match="vlmnb does not support: tokens"):
        make_config({**base, "tokens": ["<new>"]})


def test_refusals_name_the_key(local, tmp_path):
    base = as_run("qwen2_vl", local, tmp_path / "out")
    cases = {
        "adapter": ({k: v for k, v in base.items() if k != "adapter"}, "adapter: not set. Axolotl reads a config without `adapter` as full fine-tuning, which vlmnb does not do (it trains LoRA and QLoRA adapters). Add `adapter: lora` or `adapter: qlora`."),
        "pad": ({**base, "pad_to_sequence_len": True}, "Axolotl keys that would change training but vlmnb does not support: pad_to_sequence_len."),
        "optimizer": ({**base, "optimizer": "adamw_torchh"}, "optimizer='adamw_torchh' is not one the Trainer knows; did you mean 'adamw_torch'?"),
        "scheduler": ({**base, "lr_scheduler": "cosin"}, "lr_scheduler='cosin' is not one the Trainer knows; did you mean 'cosine'?"),
        "jinja": ({**base, "chat_template_jinja": "{{ messages }}"}, "chat_template_jinja: vlmnb always renders the checkpoint's own chat template"),
        "eos": ({**base, "datasets": [{**base["datasets"][0], "train_on_eos": "last"}]}, "datasets[0].train_on_eos='last': vlmnb labels the end-of-turn token of every assistant turn"),
        "plugin": ({**base, "plugins": ["axolotl.integrations.other.OtherPlugin"]}, "plugins: ['axolotl.integrations.other.OtherPlugin'] are not plugins vlmnb knows"),
    }
    for name, (cfg, message) in cases.items():
        with pytest.raises(ConfigError) as e:
            preflight(make_config(cfg))
        assert message in str(e.value), (name, str(e.value))


def test_unknown_keys_one_line_each_no_far_fetched_guess(local, tmp_path):
    base = as_run("qwen2_vl", local, tmp_path / "out")
    with pytest.raises(ConfigError) as e:
        make_config({**base, "learning_rat": 1e-4, "frobnicate": 1, "lora_model_dirr": "x"})
    assert str(e.value).splitlines()[1:] == ["  unknown key 'learning_rat'; did you mean 'learning_rate'?",
                                             "  unknown key 'frobnicate'", "  unknown key 'lora_model_dirr'"]


def test_speed_only_keys_accepted_with_a_note(local, tmp_path):
    base = as_run("qwen2_vl", local, tmp_path / "out")
    _, notes = noted(lambda: make_config({**base, "plugins": ["axolotl.integrations.liger.LigerPlugin"], "liger_rms_norm": True,
                                          "cut_cross_entropy": True, "lora_mlp_kernel": True, "use_kernels": True,
                                          "eot_tokens": ["<|im_end|>"], "train_on_eos": "turn"}))
    for note in ("plugins ['axolotl.integrations.liger.LigerPlugin']: speed and memory only",
                 "liger_rms_norm: speed or memory only; vlmnb trains without it (the same loss)",
                 "cut_cross_entropy: speed or memory only", "lora_mlp_kernel: speed or memory only", "use_kernels: speed or memory only",
                 "eot_tokens ['<|im_end|>']: vlmnb labels the token the checkpoint's chat template writes after each answer",
                 "train_on_eos: turn is what vlmnb does"):
        assert note in notes, note


def test_wandb_project_is_honoured_or_refused(local, tmp_path):
    base = as_run("qwen2_vl", local, tmp_path / "out", wandb_project="vlmnb-test", wandb_name="run-1")
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="wandb_project is set but wandb is not installed: pip install wandb, or remove wandb_project."):
            make_config(base)
    else:
        c = make_config(base)
        assert c.report_to == ["wandb"] and c.wandb == {"project": "vlmnb-test", "name": "run-1"}
    assert make_config(as_run("qwen2_vl", local, tmp_path / "out")).report_to == []  # the examples' empty wandb_* keys


def test_example_reads_a_dataset_repository_with_its_split_as_written(local, tmp_path, monkeypatch):
    "The example's dataset entry unchanged (type, split: train[:1%]) but for its path: a local folder in the layout of"
    " HuggingFaceH4/llava-instruct-mix-vsft, read by `datasets.load_dataset` exactly like the Hub id."
    import datasets as hfd
    from test_data_hub import LLAVA_CARD, LLAVA_FEATURES, llava_row, write_shards
    monkeypatch.setattr(hfd.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    repo = tmp_path / "llava-instruct-mix-vsft"
    colours = ["red", "green", "blue", "yellow", "purple", "cyan"]
    write_shards(repo / "data", "train", [[llava_row(i, [colours[i % 6]]) for i in range(200)]], LLAVA_FEATURES)
    write_shards(repo / "data", "test", [[llava_row(0, ["white"])]], LLAVA_FEATURES)
    (repo / "README.md").write_text(LLAVA_CARD.replace("num_examples: 5\n", "num_examples: 200\n").replace("num_examples: 2\n", "num_examples: 1\n"))
    cfg = as_run("qwen2_vl", local, tmp_path / "out")
    cfg["datasets"] = [{**yaml.safe_load(COMMON)["datasets"][0], "path": str(repo), "field_messages": "messages"}]
    assert cfg["datasets"][0]["split"] == "train[:1%]"
    pf = preflight(make_config(cfg))
    assert len(pf.train) == 2  # 1% of 200 rows, as datasets slices it


# Axolotl's examples for families added later, each whole (they differ from COMMON in many keys), written from reading
# examples/gemma4/e2b-vision-lora.yaml, examples/glm46v/glm-4-6v-flash-qlora.yaml and examples/qwen3.5/9b-lora-vision.yaml
# (November 2026 snapshot); base_model,
# datasets, output_dir and max_steps are pointed at local things as above.
WHOLE = {
    "qwen3_5": """
base_model: Qwen/Qwen3.5-9B
processor_type: AutoProcessor
skip_prepare_dataset: true
remove_unused_columns: false
sample_packing: false
chat_template: qwen3_5
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
dataset_prepared_path: last_run_prepared
val_set_size: 0.0
output_dir: ./outputs/out
adapter: lora
lora_model_dir:
sequence_len: 8192
pad_to_sequence_len: false
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules: [q_proj, k_proj, v_proj, o_proj, down_proj, up_proj]
wandb_project:
gradient_accumulation_steps: 4
micro_batch_size: 1
num_epochs: 1
optimizer: adamw_bnb_8bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: true
tf32: true
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
logging_steps: 1
flash_attention: true
warmup_ratio: 0.1
evals_per_epoch: 1
saves_per_epoch: 1
weight_decay: 0.0
""",
    "gemma4": r"""
base_model: google/gemma-4-E2B-it
processor_type: AutoProcessor
freeze_mm_modules: true
plugins:
  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin
strict: false
skip_prepare_dataset: true
remove_unused_columns: false
sample_packing: false
chat_template: gemma4
eot_tokens:
  - "<turn|>"
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:100]
val_set_size: 0
output_dir: ./outputs/gemma4-e2b-vision-lora
adapter: lora
sequence_len: 2048
pad_to_sequence_len: false
lora_r: 16
lora_alpha: 32
lora_dropout: 0
lora_target_modules: 'model.language_model.layers.[\d]+.(_checkpoint_wrapped_module.)?(mlp|self_attn).(up|down|gate|q|k|v|o)_proj'
gradient_accumulation_steps: 4
micro_batch_size: 1
num_epochs: 1
max_steps: 10
optimizer: adamw_torch_8bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: auto
tf32: true
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
logging_steps: 1
attn_implementation: sdpa
warmup_ratio: 0.1
weight_decay: 0.0
wandb_project:
wandb_entity:
""",
    "glm46v": """
base_model: zai-org/GLM-4.6V-Flash
trust_remote_code: true
processor_type: AutoProcessor
load_in_4bit: true
skip_prepare_dataset: true
remove_unused_columns: false
sample_packing: false
output_dir: ./outputs/glm-4-6v-flash-qlora
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
adapter: qlora
lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_modules: [gate_proj, down_proj, up_proj, q_proj, v_proj, k_proj, o_proj]
sequence_len: 2048
gradient_accumulation_steps: 4
micro_batch_size: 1
num_epochs: 1
optimizer: adamw_8bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: auto
tf32: false
gradient_checkpointing: true
logging_steps: 1
flash_attention: true
warmup_ratio: 0.1
evals_per_epoch: 0
saves_per_epoch: 1
weight_decay: 0.0
""",
}


def whole_run(family: str, local: Path, out: Path, **changes) -> dict:
    cfg = yaml.safe_load(WHOLE[family])
    model_dir = local / f"model-{family}"
    if not model_dir.exists(): tiny_model(family, model_dir)
    cfg.update(base_model=str(model_dir), output_dir=str(out), max_steps=2, **changes)
    cfg["datasets"] = [{k: v for k, v in d.items() if k != "split"} | {"path": str(local / "train.jsonl")} for d in cfg["datasets"]]
    return cfg


def test_gemma4_example(local, tmp_path, capsys):
    "As written it asks for torchao's 8-bit AdamW: refused up front, naming the optimizer and the fix; with that fixed it trains."
    path = write(whole_run("gemma4", local, tmp_path / "out"), tmp_path / "config.yml")
    code, out = validate(path, capsys)
    if importlib.util.find_spec("torchao") is None:
        assert code == 2 and "optimizer='adamw_torch_8bit' cannot be built here" in out and "torchao" in out, out[-1500:]
        path = write(whole_run("gemma4", local, tmp_path / "out", optimizer="adamw_torch"), tmp_path / "config.yml")
        code, out = validate(path, capsys)
    assert code == 0 and "chat_template: gemma4 is Gemma 4's own format" in out and "answers end with <turn|>" in out, out[-1500:]
    assert "LoRA: 14 modules" in out  # q, k, v, o, gate, up, down of the two language layers: nothing of the vision tower
    (_, notes), _ = noted(lambda: from_axolotl(yaml.safe_load(path.read_text())))
    assert any(n.startswith("freeze_mm_modules: vlmnb trains no vision tower") for n in notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train(path).metrics["steps"] == 2


def test_glm46v_example(local, tmp_path, capsys):
    "QLoRA with a bare list of projection names: it also reaches the GLM vision tower's MLP, which vlmnb says; flash-attention falls back."
    path = write(whole_run("glm46v", local, tmp_path / "out"), tmp_path / "config.yml")
    code, out = validate(path, capsys)
    assert code == 0 and "appends <|user|>" in out, out[-1500:]
    assert ("note: attention: flash_attention_2 needs the flash-attn package and a CUDA GPU" in out) != FLASH
    cfg = make_config(path)
    _, warned = noted(lambda: preflight(cfg))
    assert "also adapts" in warned and "vision tower" in warned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(path)
    assert result.metrics["steps"] == 2 and (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_qwen3_5_example(local, tmp_path, capsys):
    "Its bare list (no gate_proj, and the Gated DeltaNet projections left commented out) adapts q/k/v/o only on softmax layers."
    path = write(whole_run("qwen3_5", local, tmp_path / "out"), tmp_path / "config.yml")
    code, out = validate(path, capsys)
    assert code == 0 and "chat_template: qwen3_5 is Qwen3.5's own format" in out and "answers end with <|im_end|>" in out, out[-1500:]
    targets = set(preflight(make_config(path)).targets)
    lm = ARCHS["qwen3_5"].language_model
    assert targets == {f"{lm}.layers.0.mlp.{p}" for p in ("down_proj", "up_proj")} | {  # layer 0 is linear attention
        f"{lm}.layers.1.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj", "mlp.up_proj")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train(path).metrics["steps"] == 2
