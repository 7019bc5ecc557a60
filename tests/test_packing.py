"""Packing (`VLMCollator(packing=True)`): for every family that packs, each sample's loss in a packed row equals its loss
alone, and the batch's loss and gradients equal the unpacked batch's (fp32; tolerances below). The families refused
are refused for a reason this file measures: their packed samples do not stay apart."""
import re, warnings

import pytest
import torch

from vlmnb.collate import PackingError, VLMCollator, check_packing, packed_rows
from vlmnb.data import colour_shapes
from vlmnb.load import ARCHS, TINY_ARCHS, tiny_model
from vlmnb.train import label_loss

warnings.filterwarnings("ignore")
PACKS = [t for t in TINY_ARCHS if not ARCHS[t].no_packing]
REFUSED = [t for t in TINY_ARCHS if ARCHS[t].no_packing]


def samples(n=6):
    ds = colour_shapes(n, seed=1)
    out = [ds[i] for i in range(n)]
    out[1]["messages"][-1]["content"] = [{"type": "text", "text": "It is a red circle on a grey ground, drawn small and near the middle."}]
    out[3]["messages"][-1]["content"] = [{"type": "text", "text": "A shape, coloured, on a plain ground: nothing else is there."}]
    return out


def model_for(model_type):
    torch.manual_seed(0)
    model, processor = tiny_model(model_type)
    model = model.float().train()
    for m in model.modules():
        if isinstance(getattr(m, "p", None), float): m.p = 0.0
    return model, processor


def per_sample(model, batch, rows):
    "Summed loss of each sample of a packed batch (by sample index), from one forward."
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    tok = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="none")
    tok = tok.view(labels.shape[0], -1)
    text = batch["position_ids"][0] if batch["position_ids"].ndim == 3 else batch["position_ids"]
    segment = (text == 0).long().cumsum(1)[:, 1:] - 1
    return {row[s]: tok[r][segment[r] == s].sum().item() for r, row in enumerate(rows) for s in range(len(row))}


def packer(model, processor, model_type, **kw):
    return VLMCollator(processor, arch=ARCHS[model_type], packing=True, model=model, **kw)


@pytest.mark.parametrize("model_type", PACKS)
def test_packed_equals_unpacked(model_type):
    "Loss sum within 1e-5 relative, each gradient within 1e-5 of the largest, each sample's loss within 1e-4 relative."
    model, processor = model_for(model_type)
    data = samples()
    unpacked = VLMCollator(processor, arch=ARCHS[model_type])(data)
    collator = packer(model, processor, model_type, pack_length=int(unpacked["attention_mask"].sum(1).max()) * 2)
    packed, rows = packed_rows(collator, data)
    assert len(rows) < len(data) and packed["use_cache"] is False
    assert isinstance(packed.get("attention_mask"), dict) if ARCHS[model_type].packed_blocks else "attention_mask" not in packed
    if ARCHS[model_type].rope_index: assert packed["position_ids"].shape[:2] == (4, len(rows))
    total, n = label_loss(model, unpacked); total.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}; model.zero_grad()
    total_p, n_p = label_loss(model, packed); total_p.backward()
    assert n_p == n and total_p.item() == pytest.approx(total.item(), rel=1e-5)
    scale = max(g.abs().max().item() for g in expected.values())
    for k, g in expected.items():
        assert (dict(model.named_parameters())[k].grad - g).abs().max().item() <= 1e-5 * scale, k
    model.zero_grad()
    with torch.no_grad():
        together = per_sample(model, packed, rows)
        for i, s in enumerate(data):
            alone = label_loss(model, VLMCollator(processor, arch=ARCHS[model_type])([s]))[0].item()
            assert together[i] == pytest.approx(alone, rel=1e-4), (model_type, i)


@pytest.mark.parametrize("model_type", ["paligemma", "qwen3_5"])
def test_refused_families_do_leak(model_type):
    "What `no_packing` says, measured: packed past the refusal, some sample's loss differs from its loss alone."
    model, processor = model_for(model_type)
    data = samples()
    arch = ARCHS[model_type]
    unpacked = VLMCollator(processor, arch=arch)(data)
    from dataclasses import replace
    allowed = replace(arch, no_packing="")
    collator = VLMCollator(processor, arch=allowed, packing=True, model=model,
                           pack_length=int(unpacked["attention_mask"].sum(1).max()) * 2)
    packed, rows = packed_rows(collator, data)
    with torch.no_grad():
        together = per_sample(model, packed, rows)
        off = max(abs(together[i] - label_loss(model, VLMCollator(processor, arch=arch)([s]))[0].item()) / together[i]
                  for i, s in enumerate(data))
    assert off > 1e-4, f"{model_type}: packing looks exact ({off:.1e}); the refusal may no longer be needed"


@pytest.mark.parametrize("model_type", REFUSED)
def test_refusals_name_the_family(model_type):
    with pytest.raises(PackingError, match=re.escape(f"{ARCHS[model_type].name} cannot pack")):
        check_packing(ARCHS[model_type])


def test_first_fit_decreasing_uses_the_preflight_lengths():
    "With `length` on every sample (the pre-flight's counts), rows are filled first-fit decreasing: fewer rows than in order."
    model, processor = model_for("smolvlm")
    data = samples()
    lengths = VLMCollator(processor, model_type="smolvlm")(data)["attention_mask"].sum(1).tolist()
    budget = max(lengths) + min(lengths)
    _, in_order = packed_rows(VLMCollator(processor, model_type="smolvlm", packing=True, pack_length=budget), data)
    _, ffd = packed_rows(VLMCollator(processor, model_type="smolvlm", packing=True, pack_length=budget),
                         [{**s, "length": n} for s, n in zip(data, lengths)])
    assert len(ffd) <= len(in_order)
    for row in ffd: assert sum(lengths[i] for i in row) <= budget or len(row) == 1
    assert sorted(i for row in ffd for i in row) == list(range(len(data)))


@pytest.mark.parametrize("model_type", ["qwen2_vl", "smolvlm"])
def test_train_packs_end_to_end(model_type, tmp_path):
    "`packing: true` (here as Axolotl's sample_packing): the pre-flight reports it, batches are packed rows, the loss falls."
    from vlmnb.train import make_config, train
    seen = []
    cfg = make_config({"base_model": f"tiny:{model_type}", "adapter": "lora", "sample_packing": True, "pack_length": 256,
                       "datasets": [{"path": "synthetic:colour_shapes", "n": 32, "seed": 3}], "max_steps": 8, "batch_size": 8,
                       "learning_rate": 3e-3, "logging_steps": 1, "output_dir": str(tmp_path / "run"), "progress_bar": False, "seed": 0})
    assert cfg.packing
    import vlmnb.collate as collate
    original = collate.pack_batch
    def spy(*a, **k):
        out = original(*a, **k); seen.append(out[0]["input_ids"].shape[0]); return out
    collate.pack_batch = spy
    try: result = train(cfg)
    finally: collate.pack_batch = original
    m = result.metrics
    assert m["settings"]["batching"] == "random, packed"
    assert seen and max(seen) < 8, seen  # rows per batch of 8 samples
    assert m["final_loss"] < m["train_loss"]


def test_preflight_refuses_packing_by_family(tmp_path):
    from vlmnb.train import ConfigError, make_config, preflight
    cfg = make_config({"base_model": "tiny:paligemma", "packing": True, "datasets": [{"path": "synthetic:colour_shapes", "n": 8}],
                       "output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=re.escape("packing: PaliGemma cannot pack")):
        preflight(cfg)


@pytest.mark.parametrize("model_type", ["gemma3", "gemma4"])
def test_gemma_masks_under_eager_attention(model_type):
    "The masks vlmnb builds for Gemma's packed rows hold under eager attention too (additive float masks): per-sample losses as alone."
    model, processor = model_for(model_type)
    model.set_attn_implementation("eager")
    data = samples()
    collator = packer(model, processor, model_type, pack_length=10_000)
    packed, rows = packed_rows(collator, data)
    assert all(m.dtype == torch.float32 for m in packed["attention_mask"].values())
    with torch.no_grad():
        together = per_sample(model, packed, rows)
        for i, s in enumerate(data):
            alone = label_loss(model, VLMCollator(processor, arch=ARCHS[model_type])([s]))[0].item()
            assert together[i] == pytest.approx(alone, rel=1e-4), (model_type, i)


def test_gemma3_without_vlmnbs_masks_leaks():
    "Why Gemma 3 gets vlmnb's masks: with only restarting position ids, transformers 5.23's sliding layers mix packed samples."
    model, processor = model_for("gemma3")
    data = samples()
    packed, rows = packed_rows(packer(model, processor, "gemma3", pack_length=10_000), data)
    bare = {k: v for k, v in packed.items() if k != "attention_mask"}
    with torch.no_grad():
        together = per_sample(model, bare, rows)
        off = max(abs(together[i] - label_loss(model, VLMCollator(processor, model_type="gemma3")([s]))[0].item()) / together[i]
                  for i, s in enumerate(data))
    assert off > 1e-4, f"transformers now keeps packed Gemma 3 samples apart by itself ({off:.1e}): vlmnb's masks may go"


def test_qwen_vl_needs_the_text_row_of_position_ids():
    """transformers 5.23's Qwen2-VL reads packed rows from position_ids of shape [4, rows, length] only: row 0 (text
    positions) is what its mask builder sees. The same rows with the three rotary rows alone ([3, rows, length]) leak."""
    model, processor = model_for("qwen2_vl")
    data = samples()
    packed, rows = packed_rows(packer(model, processor, "qwen2_vl", pack_length=10_000), data)
    assert packed["position_ids"].shape[0] == 4
    three = {**packed, "position_ids": packed["position_ids"][1:]}
    with torch.no_grad():
        alone = [label_loss(model, VLMCollator(processor, model_type="qwen2_vl")([s]))[0].item() for s in data]
        good, bad = per_sample(model, packed, rows), per_sample(model, three, rows)
    assert all(good[i] == pytest.approx(alone[i], rel=1e-4) for i in range(len(data)))
    assert any(abs(bad[i] - alone[i]) > 1e-3 * alone[i] for i in range(len(data)))
