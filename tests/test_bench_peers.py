"""The peers in the benchmark (`bench/peers.py`): what it generates and counts is checked offline, without any peer
installed (configs, data conversion, token counting, the in-process meter, the image-only processor shim, the error
report); one short end-to-end run per peer happens only where that peer's venv exists (`python bench/peers.py install`)."""
import importlib.util, json, os, subprocess, sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).parents[1]

def _load(name):
    if name in sys.modules: return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT/"bench"/f"{name}.py")
    mod = importlib.util.module_from_spec(spec); sys.modules[name] = mod; spec.loader.exec_module(mod)
    return mod

vs_trl, peers = _load("vs_trl"), _load("peers")
ARGS = Namespace(batch_size=3, lr=1e-4, lora_r=8, lora_alpha=16, seed=7, bf16=False, optim="adamw_torch", max_length=4096,
                 pack_length=2048, timeout=600)
RUNS = [(p, s, c) for p, spec in peers.PEERS.items() for s in spec["settings"] for c in ("llava", "qwen2-vl")]

@pytest.mark.parametrize("peer,setting,case", RUNS)
def test_config_carries_the_run_settings(peer, setting, case, tmp_path):
    "Every peer's config has the bench's LoRA, learning rate, batch size, seed, one epoch, linear schedule, no checkpointing, no eval."
    s = peers.settings_for(ARGS)
    c = peers.make_config(peer, setting, case, tmp_path/"model", tmp_path/"data", tmp_path/"out", s)
    get = lambda *keys: next(c[k] for k in keys if k in c)
    assert get("model_name_or_path", "model", "base_model") == str(tmp_path/"model")
    assert get("lora_rank", "lora_r") == 8 and c["lora_alpha"] == 16 and c["lora_dropout"] == 0.0
    assert c["learning_rate"] == 1e-4 and c["seed"] == 7
    assert get("lr_scheduler_type", "lr_scheduler") == "linear"
    assert get("num_train_epochs", "num_epochs") == 1
    assert get("optim", "optimizer") == "adamw_torch" and c["bf16"] is False and c["fp16"] is False
    assert get("disable_gradient_checkpointing", "gradient_checkpointing") is (peer == "llamafactory")  # i.e. checkpointing off
    assert c.get("val_set_size", 0) == 0 and c.get("eval_strategy", "no") == "no" and "do_eval" not in c
    assert get("cutoff_len", "max_length", "sequence_len") >= 2048
    if peer == "llamafactory":
        packed = setting == "neat_packing"
        assert c.get("packing", False) is packed and c.get("neat_packing", False) is packed and c["save_strategy"] == "no"
        assert c["per_device_train_batch_size"] == (1 if packed else 3) and c["lora_target"] == "all"
        assert c["template"] == {"llava": "llava", "qwen2-vl": "qwen2_vl"}[case]
    elif peer == "ms-swift":
        assert c["per_device_train_batch_size"] == 3 and c["torch_dtype"] == "float32" and c["save_only_model"] is True
        assert c["save_strategy"] == "epoch" and c["save_total_limit"] == 1  # the final adapter only (one epoch)
    else:
        assert c["micro_batch_size"] == 3 and c["sample_packing"] is False and c["save_strategy"] == "no"
        assert not any(c[k] for k in c if k.startswith("lora_") and k.endswith("_kernel"))

@pytest.mark.parametrize("peer", list(peers.PEERS))
def test_config_files_read_back(peer, tmp_path):
    "The YAML (LLaMA-Factory, Axolotl) reads back as the same config; ms-swift's flags pair each key with its value."
    c = peers.make_config(peer, "unpacked", "qwen2-vl", tmp_path/"m", tmp_path/"d", tmp_path/"o", peers.settings_for(ARGS))
    cmd = peers.command(peer, c, tmp_path, tmp_path/"home")
    if peer == "ms-swift":
        assert cmd[1] == "sft"
        flags = dict(zip(cmd[2::2], cmd[3::2]))
        assert flags["--lora_rank"] == "8" and flags["--gradient_checkpointing"] == "false" and len(flags) == len(c)
    else:
        assert yaml.safe_load(Path(cmd[2]).read_text()) == c

def test_axolotl_targets_are_the_lm_projections():
    "Axolotl's LoRA regex picks the language model's seven projections and nothing in the vision tower or projector."
    import re
    names = [f"model.language_model.layers.{i}.{b}.{p}" for i in (0, 11) for b, ps in
             (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj"))) for p in ps]
    others = ["model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj", "model.visual.blocks.0.attn.qkv",
              "model.multi_modal_projector.linear_1", "lm_head", "model.language_model.embed_tokens"]
    assert all(re.fullmatch(peers.AXOLOTL_TARGETS, n) for n in names)
    assert not any(re.fullmatch(peers.AXOLOTL_TARGETS, n) for n in others)

@pytest.mark.parametrize("setting", ["packing", "neat_packing"])
def test_settings_a_peer_lacks_are_refused_with_why(setting, tmp_path):
    with pytest.raises(ValueError, match="flash-attention|no setting"):
        peers.make_config("ms-swift", setting, "llava", tmp_path, tmp_path, tmp_path, peers.settings_for(ARGS))
    with pytest.raises(ValueError, match="multimodal|no setting"):
        peers.make_config("axolotl", setting, "llava", tmp_path, tmp_path, tmp_path, peers.settings_for(ARGS))

@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    "Bench samples as vs_trl writes them (some with two images)."
    from vlmnb.load import tiny_tokenizer
    return vs_trl.make_data(tmp_path_factory.mktemp("data"), 12, seed=1, tok=tiny_tokenizer("llava"))

def test_data_conversion_round_trips(samples, tmp_path):
    "Each peer's layout converts back to the bench's rows: same messages, same images in the same slots."
    rows = [json.loads(l) for l in samples.read_text().splitlines()]
    assert any(len(r["images"]) == 2 for r in rows)
    for peer in peers.PEERS:
        out = peers.write_data(peer, samples, tmp_path/peer)
        if peer == "llamafactory":
            info = json.loads((out/"dataset_info.json").read_text())[peers.LF_DATASET]
            assert info["formatting"] == "sharegpt"
            back = peers.from_placeholder_rows(json.loads((out/info["file_name"]).read_text()))
        else:
            theirs = [json.loads(l) for l in out.read_text().splitlines()]
            back = (peers.from_placeholder_rows if peer == "ms-swift" else peers.from_axolotl_rows)(theirs)
            if peer == "axolotl": assert "images" not in theirs[0] and theirs[0]["messages"][0]["content"][0]["path"] == rows[0]["images"][0]
            else: assert theirs[0]["messages"][0]["content"].count("<image>") == len(rows[0]["images"])
        assert back == rows, peer

def test_placeholder_in_text_is_refused():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is <image>?"}]}], "images": []}
    with pytest.raises(ValueError, match="placeholder"): peers.to_placeholder_rows([row])

# ---------------------------------------------------------------- counting
def _lf_mask(index: list[list[int]], additive=True):
    "LLaMA-Factory's neat-packing mask, built the same way: causal, within a sample index, nothing for index 0 (padding)."
    idx = torch.tensor(index)
    n = idx.shape[1]
    ok = (idx[:, :, None] == idx[:, None, :]) & (idx[:, None, :] != 0) & torch.tril(torch.ones(n, n, dtype=torch.bool))
    ok = ok[:, None]
    return torch.where(ok, 0.0, torch.finfo(torch.float32).min) if additive else ok

@pytest.mark.parametrize("additive", [True, False])
def test_count_packed_batch_with_4d_mask(additive):
    "Two packed rows, samples kept apart by a 4D mask, padding at the end: real tokens per sample, not per row."
    index = [[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 2, 2, 2, 0]]
    batch = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": _lf_mask(index, additive),
             "pixel_values": torch.zeros(5, 3, 4, 4)}
    c = peers.count_batch(batch)
    assert c["tokens"] == [3, 2, 1, 4, 3] and c["positions"] == 16 and c["images"] == 5 and c["grid"] is None

def test_count_adjacent_samples_of_equal_length():
    "Two samples of the same length side by side are still two (the mask, not the lengths, tells them apart)."
    c = peers.count_batch({"input_ids": torch.ones(1, 6, dtype=torch.long), "attention_mask": _lf_mask([[1, 1, 1, 2, 2, 2]])})
    assert c["tokens"] == [3, 3]

def test_count_padded_batch():
    "One sample a row, right or left padding: the 2D mask's ones."
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    c = peers.count_batch({"input_ids": torch.ones(3, 6, dtype=torch.long), "attention_mask": mask, "image_grid_thw": grid,
                           "pixel_values": torch.zeros(28, 1176)})
    assert c["tokens"] == [4, 4, 6] and c["positions"] == 18 and c["grid"] == [[1, 4, 6], [1, 2, 2]] and c["images"] == 2

def test_count_index_mask_and_padding_free():
    "A 2D mask of sample indices (flash-attention packing), and no mask at all (position ids restarting, mRoPE's too)."
    c = peers.count_batch({"input_ids": torch.ones(1, 7, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 2, 2, 2, 3, 0]])})
    assert c["tokens"] == [2, 3, 1]
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert peers.count_batch({"input_ids": torch.ones(1, 9, dtype=torch.long), "position_ids": pos})["tokens"] == [3, 2, 4]
    mrope = pos[None].expand(3, 1, 9)
    assert peers.count_batch({"input_ids": torch.ones(1, 9, dtype=torch.long), "position_ids": mrope})["tokens"] == [3, 2, 4]

def test_count_checks_images_reach_the_model_whole():
    """Image tokens in the batch against those its images have: equal when the placeholders were expanded (Qwen2-VL grid /
    4, LLaVA a fixed count each); a batch with one placeholder per image (ms-swift's Qwen2-VL template with a vocabulary
    other than Qwen's, unpatched) is counted as the model sees it, and the shortfall shows."""
    I = 9
    grid = torch.tensor([[1, 4, 4], [1, 2, 4]])  # 4 and 2 image tokens after the 2x2 merge
    expanded = {"input_ids": torch.tensor([[5, I, I, I, I, 6, 7], [5, I, I, 8, 3, 0, 0]]), "image_grid_thw": grid,
                "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2])}
    c = peers.count_batch(expanded, image_token_id=I, merge=4)
    assert c["tokens"] == [7, 5] and c["image_tokens"] == c["image_tokens_expected"] == 6
    collapsed = {"input_ids": torch.tensor([[5, I, 6, 7], [5, I, 8, 3]]), "image_grid_thw": grid, "attention_mask": torch.ones(2, 4)}
    c = peers.count_batch(collapsed, image_token_id=I, merge=4)
    assert c["tokens"] == [4, 4] and c["image_tokens"] == 2 and c["image_tokens_expected"] == 6
    llava = {"input_ids": torch.tensor([[I, I, I, 4], [I, I, I, 0]]), "attention_mask": torch.tensor([[1] * 4, [1] * 3 + [0]]),
             "pixel_values": torch.zeros(2, 3, 8, 8)}
    c = peers.count_batch(llava, image_token_id=I, per_image=3)
    assert c["image_tokens"] == c["image_tokens_expected"] == 6 and "image_tokens" not in peers.count_batch(llava)

def test_measured_warns_when_images_are_cut_short(tmp_path):
    batches = [{"tokens": [4, 4], "positions": 8, "grid": [[1, 4, 4]], "images": 1, "image_tokens": 1, "image_tokens_expected": 4}]
    m = {"batches": batches, "train_s": 1.0, "fetch_s": 0.1, "wall_begin": 1.0, "peak_rss_mib": 1.0, "trainable": 1, "precision": "fp32"}
    r = peers.measured(m, tmp_path, launched=0.0)
    assert r["image_tokens"] == 1 and "did not expand" in r["warning"] and r["mfu"] is None and "mfu_note" in r

@pytest.mark.parametrize("case", ["llava", "qwen2-vl"])
def test_flops_match_vs_trl_meter(case):
    "On a padded batch the peers' FLOP count is vs_trl.Meter's, to the FLOP (MFU has one definition)."
    sizes = {"params": 0, "lm_weights": 1000, "lm_layers": 2, "lm_width": 16, "vision_weights": 500, "vision_layers": 2,
             "vision_width": 8, "projector_weights": 50, "case": case, "image_side": 224, "patch": 14}
    batch = {"input_ids": torch.ones(2, 9, dtype=torch.long), "attention_mask": torch.tensor([[1] * 9, [1] * 5 + [0] * 4])}
    if case == "llava": batch["pixel_values"] = torch.zeros(3, 3, 224, 224)
    else: batch["image_grid_thw"] = torch.tensor([[1, 4, 6], [1, 8, 8]])
    meter = vs_trl.Meter(sizes); meter.count(batch)
    assert peers.batch_flops(sizes, peers.count_batch(batch)) == meter.flops

def test_measured_turns_meter_into_report(tmp_path):
    "A meter file's batches become vs_trl's report numbers; MFU against the run precision's peak."
    (tmp_path/"sizes.json").write_text(json.dumps({"params": 0, "lm_weights": 1000, "lm_layers": 2, "lm_width": 16,
        "vision_weights": 500, "vision_layers": 2, "vision_width": 8, "projector_weights": 50, "case": "llava"}))
    (tmp_path/"peak.json").write_text(json.dumps({"bf16": 2e9, "fp32": 1e9}))
    batches = [{"tokens": [3, 2], "positions": 8, "grid": None, "images": 2}, {"tokens": [4], "positions": 4, "grid": None, "images": 1}]
    m = {"batches": batches, "train_s": 2.0, "fetch_s": 0.5, "wall_begin": 105.0, "peak_rss_mib": 900.0, "trainable": 10, "precision": "fp32"}
    r = peers.measured(m, tmp_path, launched=100.0)
    assert r["real_tokens"] == 9 and r["samples"] == 3 and r["padding"] == pytest.approx(0.25) and r["tokens_per_s"] == 4.5
    assert r["data_share"] == 0.25 and r["setup_s"] == 5.0 and r["steps"] == 2 and 0 < r["mfu"]
    assert set(vs_trl.REPORT_KEYS) - {"eval_loss"} <= set(r)

# ---------------------------------------------------------------- in a peer's process, simulated with this environment's transformers
METER_SCRIPT = r'''
import torch, transformers
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.emb = torch.nn.Embedding(10, 4); self.out = torch.nn.Linear(4, 10)
    def forward(self, input_ids, attention_mask=None, labels=None, **kw):
        logits = self.out(self.emb(input_ids))
        return {"loss": torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100), "logits": logits}
rows = [{"input_ids": [1] * n + [0] * (5 - n), "attention_mask": [1] * n + [0] * (5 - n), "labels": [1] * n + [-100] * (5 - n)} for n in (5, 3, 2, 4)]
args = transformers.TrainingArguments(output_dir=OUT, per_device_train_batch_size=2, num_train_epochs=1, report_to="none",
                                      save_strategy="no", use_cpu=True, disable_tqdm=True, logging_strategy="no")
transformers.Trainer(model=Tiny(), args=args, train_dataset=rows).train()
'''

def test_meter_in_a_separate_process(tmp_path):
    "The generated sitecustomize patches Trainer in a fresh interpreter: batches counted, meter.json written at train end."
    site = tmp_path/"site"; site.mkdir()
    (site/"sitecustomize.py").write_text(peers.SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "VLMNB_PEERS_FILE": str(ROOT/"bench"/"peers.py"),
           "VLMNB_PEER_METER": str(tmp_path/"meter.json"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", f"OUT = {str(tmp_path/'out')!r}\n" + METER_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path/"meter.json").read_text())
    assert sorted(t for b in m["batches"] for t in b["tokens"]) == [2, 3, 4, 5]
    assert sum(b["positions"] for b in m["batches"]) == 20 and m["trainable"] == 10 * 4 + 4 * 10 + 10
    assert m["train_s"] > 0 and m["peak_rss_mib"] > 50 and m["precision"] == "fp32" and m["gradient_checkpointing"] is False

SHIM_SCRIPT = r'''
import sys
sys.modules["vlmnb"] = None  # as in a peer venv where vlmnb cannot be imported
import importlib.util
spec = importlib.util.spec_from_file_location("peers", PEERS_FILE); peers = importlib.util.module_from_spec(spec); spec.loader.exec_module(peers)
source = peers.register_image_only()
assert source.startswith(peers.IMAGE_ONLY_SHIM), source
from PIL import Image
import transformers
p = transformers.AutoProcessor.from_pretrained(MODEL)
assert type(p).__name__ == "Qwen2VLImageOnlyProcessor" and not hasattr(p, "video_processor"), type(p)
out = p(images=[Image.new("RGB", (64, 64))], text=["<|vision_start|><|image_pad|><|vision_end|>hi"])
print(type(p).__name__, tuple(out["image_grid_thw"][0].tolist()), len(out["input_ids"][0]))
'''

def test_image_only_shim_without_vlmnb(tmp_path):
    "Where vlmnb cannot be imported, the shim registers a Qwen2VLImageOnlyProcessor that loads the bench's Qwen2-VL processor."
    import transformers
    from vlmnb.load import CHAT_TEMPLATES, image_only, tiny_tokenizer
    ip = transformers.Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})
    image_only(transformers.Qwen2VLProcessor)(ip, tiny_tokenizer("qwen2_vl"), chat_template=CHAT_TEMPLATES["qwen2_vl"]).save_pretrained(tmp_path)
    code = f"PEERS_FILE = {str(ROOT/'bench'/'peers.py')!r}\nMODEL = {str(tmp_path)!r}\n" + SHIM_SCRIPT
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "Qwen2VLImageOnlyProcessor"

# ---------------------------------------------------------------- installing and failing
def test_install_is_a_no_op_once_stamped(tmp_path, monkeypatch):
    "A stamp beside the venv's python: install returns it and runs nothing."
    py = peers.venv_python("axolotl", tmp_path); py.parent.mkdir(parents=True); py.write_text("")
    peers.stamp_file("axolotl", tmp_path).write_text(json.dumps({"versions": {"peer": "0.19.0"}}))
    monkeypatch.setattr(peers.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    assert peers.install("axolotl", home=tmp_path, log=lambda *_: None)["versions"]["peer"] == "0.19.0"
    assert json.loads(peers.write_versions(tmp_path).read_text()) == {"axolotl": {"peer": "0.19.0"}}

def test_error_report_when_peer_is_absent(tmp_path, monkeypatch):
    "No venv: run_peer reports why (and how to install) instead of raising, and writes the report beside vs_trl's."
    monkeypatch.setenv("VLMNB_PEERS", str(tmp_path/"nowhere"))
    for peer in peers.PEERS:
        r = peers.run_peer(peer, "unpacked", tmp_path/"work", "llava", ARGS)
        assert "not installed" in r["error"] and f"install --peers {peer}" in r["error"] and "tokens_per_s" not in r
        assert json.loads((tmp_path/"work"/"runs"/f"{peer}-unpacked.json").read_text())["error"] == r["error"]
    r = peers.run_peer("ms-swift", "packing", tmp_path/"work", "llava", ARGS)
    assert "flash-attention" in r["error"]
    assert "unknown peer" in peers.run_peer("unsloth", "unpacked", tmp_path/"work", "llava", ARGS)["error"]

# ---------------------------------------------------------------- end to end, where a peer is installed
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A small bench work folder (LLaVA case, 4 training samples, 2 held out), as `vs_trl.py --workdir` makes it."
    work = tmp_path_factory.mktemp("peers-work")
    vs_trl.prepare(work, Namespace(case="llava", samples=4, heldout=2))
    (work/"peak.json").write_text(json.dumps({"bf16": 1e13, "fp32": 1e13}))  # above any CPU here: MFU stays below 1 however fast the run
    return work

@pytest.mark.parametrize("peer", list(peers.PEERS))
def test_peer_end_to_end(peer, request):
    "The peer trains in its venv on the bench's model and data; the report has vs_trl's numbers, its adapter and held-out loss."
    if not peers.stamp_file(peer).exists():
        pytest.skip(f"{peer} is not installed in {peers.peers_home()} (run `python bench/peers.py install --peers {peer}`)")
    work = request.getfixturevalue("work")  # built only where a peer can use it
    args = Namespace(**{**vars(ARGS), "batch_size": 2, "bf16": False})
    r = peers.run_peer(peer, "unpacked", work, "llava", args)
    assert "error" not in r, r["error"]
    assert r["samples"] == 4 and r["tokens_per_s"] > 0 and 0 <= r["padding"] < 1 and r["eval_loss"] > 0 and 0 < r["mfu"] < 1
    assert r["trainable_ok"], (r["trainable"], r["trainable_adapter"], r["trainable_expected"])
    assert r["precision"] == "fp32" and r["gradient_checkpointing"] is False and r["lora_dropout"] == 0.0
    assert Path(r["adapter"], "adapter_model.safetensors").exists() and r["versions"]["peer"] == peers.PEERS[peer]["version"]
