"""The benchmark against TRL (`bench/vs_trl.py`): its FLOP count agrees with torch's own counter, both tools train on
the same labels and the same LoRA modules, and a small run goes end to end and prints what it promises."""
import importlib.util, json, os, re, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("vs_trl", ROOT/"bench"/"vs_trl.py")
vs_trl = importlib.util.module_from_spec(spec); spec.loader.exec_module(vs_trl)

# qwen2-vl-152k is counted by qwen2-vl's formula (tested here) and is 402M parameters: left out of CI
@pytest.fixture(scope="module", params=[c for c in vs_trl.CASES if c != "qwen2-vl-152k"])
def case(request, tmp_path_factory):
    "A benchmark case's model folder, FLOP sizes and a few of its samples."
    from vlmnb.load import tiny_tokenizer
    work = tmp_path_factory.mktemp(request.param)
    sizes = vs_trl.build_model(request.param, work/"model", seed=0)
    if request.param == "llava": sizes.update(image_side=224, patch=14)
    data = vs_trl.make_data(work/"data", 6 if request.param == "smolvlm" else 12, seed=3, tok=tiny_tokenizer(vs_trl.CASES[request.param]["model_type"]))
    return request.param, work, sizes, data

def _batch(case_name, work, data, indices):
    from vlmnb.collate import VLMCollator
    from vlmnb.data import load_samples
    from vlmnb.load import load_processor
    processor = load_processor(str(work/"model"))
    samples = load_samples(str(data))
    collator = VLMCollator(processor, model_type=vs_trl.CASES[case_name]["model_type"])
    return processor, [samples[i] for i in indices], collator([samples[i] for i in indices])

def test_flop_count_matches_torch(case):
    """The analytic training FLOPs behind MFU are 3x a forward that torch's FlopCounterMode measures (within 3%).
    Eager attention, so attention is matmuls the counter sees (it has no formula for the CPU kernel of SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForImageTextToText
    name, work, sizes, data = case
    model = AutoModelForImageTextToText.from_pretrained(work/"model", attn_implementation="eager").eval()
    for i in range(3):  # one sample at a time: no padding, so every counted token is real
        _, _, batch = _batch(name, work, data, [i])
        batch.pop("labels")
        meter = vs_trl.Meter(sizes)
        meter.count(batch)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter: model(**batch)
        assert meter.flops / 3 == pytest.approx(counter.get_total_flops(), rel=0.03), (name, i)
        # the vision part (tower and projector) on its own: the share of a step that batching and the loss cannot touch
        vision = sum(sum(ops.values()) for mod, ops in counter.get_flop_counts().items()
                     if re.search(r"\.model\.(vision_tower|visual|vision_model|multi_modal_projector|connector)$", mod))
        assert meter.vision_flops / 3 == pytest.approx(vision, rel=0.03), (name, i)

def test_matmul_weights_cover_the_model(case):
    "The weights counted per token (language model, vision tower, projector) are all of the model but embeddings and norms."
    from transformers import AutoModelForImageTextToText
    name, work, sizes, _ = case
    model = AutoModelForImageTextToText.from_pretrained(work/"model")
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    counted = sizes["lm_weights"] + sizes["vision_weights"] + sizes["projector_weights"]
    assert 0.99 * (sizes["params"] - embeddings) < counted < sizes["params"]

def test_trl_and_vlmnb_train_on_the_same_labels(case):
    "TRL's collator (assistant_only_loss) and vlmnb's give identical input ids and labels for the benchmark's samples."
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
    name, work, sizes, data = case
    processor, samples, ours = _batch(name, work, data, range(4))
    theirs = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(
        [{"messages": s["messages"], "images": s["images"]} for s in samples])
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["labels"], theirs["labels"])
    assert (ours["labels"] != -100).sum() > 0

def test_bench_end_to_end(tmp_path):
    "A small run of the script (--quick): five runs, the table, the three comparisons, and `speedup_vs_trl: X` last."
    out = tmp_path/"results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(ROOT/"bench"/"vs_trl.py"), "--quick",
                           "--workdir", str(tmp_path/"work"), "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_vs_trl: \d+\.\d\d", lines[-1]), lines[-1]
    result = json.loads(out.read_text())
    reports = result["reports"]
    assert set(reports) == set(vs_trl.RUNS)
    for r in reports.values():
        assert r["samples"] == 8 and r["tokens_per_s"] > 0 and 0 <= r["padding"] < 1 and 0 < r["mfu"] < 1
        assert 0 < r["data_share"] < 1 and r["peak_rss_mib"] > 100 and r["eval_loss"] > 0
        assert 0 < r["vision_share"] < 1  # the vision tower's part of the model FLOPs: what batching and the loss cannot touch
    assert len({r["trainable"] for r in reports.values()}) == 1, "both tools must train the same LoRA modules"
    assert len({r["real_tokens"] for r in reports.values()}) == 1, "both tools must see the same tokens"
    trl, ours = reports["trl-defaults"], reports["vlmnb-defaults"]
    assert (trl["gradient_checkpointing"], trl["lora_dropout"]) == (True, 0.05)
    assert (ours["gradient_checkpointing"], ours["lora_dropout"], ours["batching"]) == (False, 0.0, "length-grouped")
    assert result["a"]["speedup"] == pytest.approx(ours["tokens_per_s"] / trl["tokens_per_s"])
    assert lines[-1] == f"speedup_vs_trl: {result['a']['speedup']:.2f}"
    assert reports["vlmnb-packed"]["batching"] == "random, packed" and "packing_speedup" in result
    assert result["environment"]["commit"] and result["environment"]["versions"]["transformers"]
    assert lines[-2].startswith("whole benchmark") and any(l.startswith("(c) vlmnb-packed / trl-defaults") for l in lines)
    m_trl, m_ours = reports["trl-matched"], reports["vlmnb-matched"]
    for key in ("precision", "gradient_checkpointing", "lora_dropout"): assert m_trl[key] == m_ours[key], key

def test_real_tokens_of_a_packed_batch(case):
    "Packed rows count the same real tokens as the padded batch: samples from restarting positions, the trailing padding left out."
    from vlmnb.collate import VLMCollator
    from vlmnb.data import load_samples
    from vlmnb.load import load_processor
    from transformers import AutoModelForImageTextToText
    name, work, sizes, data = case
    processor = load_processor(str(work/"model"))
    samples = [load_samples(str(data))[i] for i in range(4)]
    kind = vs_trl.CASES[name]["model_type"]
    padded = VLMCollator(processor, model_type=kind)(samples)
    model = AutoModelForImageTextToText.from_pretrained(work/"model") if kind == "qwen2_vl" else None
    packed = VLMCollator(processor, model_type=kind, packing=True, pack_length=10_000, model=model)(samples)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    assert sorted(vs_trl.real_lengths(packed, sizes["pad_id"])) == sorted(padded["attention_mask"].sum(1).tolist())
    a, b = vs_trl.Meter(sizes), vs_trl.Meter(sizes)
    a.count(padded); b.count(packed)
    assert (a.real, a.samples) == (b.real, b.samples) and a.flops == pytest.approx(b.flops)
