"""LoRA targets for every zoo architecture and switch combination, checked name by name against golden tables
written from each family's module layout; training touches only what the spec says."""
import warnings

import pytest
import torch

from vlmnb.collate import VLMCollator
from vlmnb.data import colour_shapes
from vlmnb.lora import LoraSpec, LoraTargetError, apply_lora, lora_targets, snapshot
from vlmnb.load import ARCHS, TINY_ARCHS, tiny_model

ATTN, MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
LINEAR_ATTN = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")  # Qwen3.5's Gated DeltaNet
SIGLIP = (("encoder.layers", (0, 1), ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"), ("mlp.fc1", "mlp.fc2")),)
VISION = {  # per family: (container, layer indices, attention suffixes, mlp suffixes) under the vision tower
    **{t: SIGLIP for t in ("llava", "llava_next", "idefics3", "smolvlm", "gemma3", "paligemma", "idefics2",
                               "aya_vision", "llava_onevision")},
    "qwen2_vl": (("blocks", (0, 1), ("attn.qkv", "attn.proj"), ("mlp.fc1", "mlp.fc2")),),
    "qwen2_5_vl": (("blocks", (0, 1), ("attn.qkv", "attn.proj"), ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),),
    "qwen3_vl": (("blocks", (0, 1), ("attn.qkv", "attn.proj"), ("mlp.linear_fc1", "mlp.linear_fc2")),),
    "gemma4": (("encoder.layers", (0, 1), tuple(f"self_attn.{p}.linear" for p in ATTN),
                tuple(f"mlp.{p}.linear" for p in MLP)),),  # Gemma4ClippableLinear wraps each nn.Linear
    "qwen3_5": (("blocks", (0, 1), ("attn.qkv", "attn.proj"), ("mlp.linear_fc1", "mlp.linear_fc2")),),
    "qwen3_5_moe": (("blocks", (0, 1), ("attn.qkv", "attn.proj"), ("mlp.linear_fc1", "mlp.linear_fc2")),),
    "internvl": (("encoder.layer", (0, 1), tuple(f"attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "projection_layer")),
                  ("mlp.fc1", "mlp.fc2")),),  # singular `layer`, and the output projection is `projection_layer`
    **{t: (("blocks", (0, 1), ("attn.qkv", "attn.proj"), ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),)
       for t in ("glm4v", "glm4v_moe", "glm46v")},
    "mllama": (("transformer.layers", (0, 1), tuple(f"self_attn.{p}" for p in ATTN), ("mlp.fc1", "mlp.fc2")),
               ("global_transformer.layers", (0,), tuple(f"self_attn.{p}" for p in ATTN), ("mlp.fc1", "mlp.fc2"))),
}


def mlp_of(t, i) -> tuple:
    "The MLP Linear layers of decoder layer `i`: GLM-4.1V fuses gate and up; the GLM MoE models' layer 1 is an MoE whose "
    "routed experts are 3D parameters (no Linear), so only its shared experts count."
    if t == "glm4v": return ("gate_up_proj", "down_proj")
    if t in ("glm4v_moe", "glm46v") and i >= 1: return tuple(f"shared_experts.{p}" for p in MLP)
    return MLP


def expected(t, attention=True, mlp=True, language=True, vision=False, cross=False, layers=(0, 1)):
    a, out = ARCHS[t], set()
    self_attn_layers = [0] if t == "mllama" else [0, 1]  # the tiny Mllama's layer 1 is a cross-attention layer
    hybrid = t in ("qwen3_5", "qwen3_5_moe")  # the tiny Qwen3.5's layer 0 is Gated DeltaNet (linear attention), layer 1 softmax
    mlp_path = "mlp.shared_expert" if t == "qwen3_5_moe" else "mlp"  # MoE: the shared expert (routed experts are not Linear)
    for i in layers:
        if language and attention and hybrid and i == 0: out |= {f"{a.language_model}.layers.0.linear_attn.{p}" for p in LINEAR_ATTN}
        elif language and attention and i in self_attn_layers: out |= {f"{a.language_model}.layers.{i}.self_attn.{p}" for p in ATTN}
        if language and mlp: out |= {f"{a.language_model}.layers.{i}.{mlp_path}.{p}" for p in mlp_of(t, i)}
        if cross and t == "mllama" and i == 1: out |= {f"{a.language_model}.layers.1.cross_attn.{p}" for p in ATTN}
    if vision:
        for container, idx, att, ml in VISION[t]:
            out |= {f"{a.vision_tower}.{container}.{i}.{s}" for i in idx for s in (att if attention else ()) + (ml if mlp else ())}
    return out


COMBOS = {"default": {}, "attention": {"mlp": False}, "mlp": {"attention": False}, "layer0": {"layers": [0]},
          "vision": {"vision": True}, "vision-attention": {"vision": True, "mlp": False}, "vision-only": {"language": False, "vision": True}}


@pytest.fixture(scope="module")
def models():
    return {t: tiny_model(t) for t in TINY_ARCHS}


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_exact_module_set(model_type, combo, models):
    kw = COMBOS[combo]
    want = expected(model_type, **{k: v for k, v in kw.items() if k != "layers"}, **({"layers": tuple(kw["layers"])} if "layers" in kw else {}))
    assert set(lora_targets(models[model_type][0], LoraSpec(**kw))) == want


def test_mllama_cross_attention(models):
    m = models["mllama"][0]
    assert set(lora_targets(m, LoraSpec(language=False, cross_attention=True))) == expected("mllama", language=False, cross=True)
    assert set(lora_targets(m, LoraSpec(cross_attention=True))) == expected("mllama", cross=True)


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_training_touches_only_the_spec(model_type):
    model, processor = tiny_model(model_type)
    batch = VLMCollator(processor, model_type=model_type)([s for s in colour_shapes(2, seed=4)])
    peft_model = apply_lora(model, LoraSpec(projector=False))
    frozen = {c: snapshot(peft_model, c) for c in ("vision tower", "projector", "language model", "lm_head")}
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        peft_model(**batch).loss.backward(); opt.step(); opt.zero_grad()
    for c, before in frozen.items():
        after = snapshot(peft_model, c)
        assert all(torch.equal(before[n], after[n]) for n in before), f"{model_type}: {c} changed"
    adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
    assert adapted == expected(model_type)
    moved = [n for n, p in peft_model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved, "the adapters learned nothing"


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_projector_trains_in_full(model_type):
    model, processor = tiny_model(model_type)
    peft_model = apply_lora(model, LoraSpec(projector=True))
    proj = [(n, p) for n, p in peft_model.named_parameters() if ARCHS[model_type].projector in n and "modules_to_save" in n]
    assert proj and all(p.requires_grad for _, p in proj)


@pytest.mark.parametrize("model_type", ["llava", "smolvlm", "qwen2_vl", "mllama", "qwen3_5", "qwen3_5_moe"])
def test_zero_match_error_suggests_the_regex_that_works(model_type, models):
    m, a = models[model_type][0], ARCHS[model_type]
    for bad in (r"language_model\.model\.layers\.\d+\.self_attn\.q_proj", ["wq", "wk"], r"text_model\.layers\.\d+\.mlp\.fc1"):
        with pytest.raises(LoraTargetError) as e: lora_targets(m, LoraSpec(target_modules=bad))
        msg = str(e.value)
        assert "matches no linear layer" in msg and a.lora_target in msg and "Nearest module names" in msg
        assert set(lora_targets(m, LoraSpec(target_modules=a.lora_target))) == expected(model_type)


def test_bare_list_warns_about_the_vision_tower(models):
    m = models["llava"][0]
    with pytest.warns(UserWarning, match="also adapts 4 layers of the vision tower"):
        lora_targets(m, LoraSpec(target_modules=["q_proj", "v_proj"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(lora_targets(m, LoraSpec(target_modules=["q_proj", "v_proj"], vision=True))) == 8


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_qlora_learns_after_an_eval_forward(model_type, tmp_path):
    from vlmnb.load import load_model
    tiny_model(model_type, tmp_path / model_type)
    model, processor = load_model(tmp_path / model_type, quantization="4bit")
    batch = VLMCollator(processor, model_type=model_type)([s for s in colour_shapes(2, seed=4)])
    peft_model = apply_lora(model, LoraSpec())
    vision = snapshot(peft_model, "vision tower")
    peft_model.eval()
    with torch.no_grad(): peft_model(**batch)  # bitsandbytes would repack 4-bit weights here and stop training
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(3):
        loss = peft_model(**batch).loss; loss.backward(); opt.step(); opt.zero_grad(); losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    after = snapshot(peft_model, "vision tower")
    assert all(torch.equal(vision[n], after[n]) for n in vision)


def test_modules_to_save_train_and_save(tmp_path):
    "Axolotl's lora_modules_to_save: lm_head and embed_tokens trained in full, saved with the adapter, restored by load_lora."
    from safetensors import safe_open
    from vlmnb.lora import LoraSpec, apply_lora, load_lora, save_lora
    from vlmnb.load import tiny_model
    model, _ = tiny_model("llava")
    pm = apply_lora(model, LoraSpec(modules_to_save=["lm_head", "embed_tokens"]))
    full = sorted(n for n, p in pm.named_parameters() if p.requires_grad and "lora_" not in n)
    assert full == ["base_model.model.lm_head.modules_to_save.default.weight",
                    "base_model.model.model.language_model.embed_tokens.modules_to_save.default.weight"]
    with torch.no_grad(): pm.base_model.model.lm_head.modules_to_save["default"].weight.add_(1.0)
    save_lora(pm, tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f: keys = list(f.keys())
    assert any("lm_head" in k for k in keys) and any("embed_tokens" in k for k in keys)
    restored = load_lora(tiny_model("llava")[0], tmp_path)
    assert torch.equal(restored.base_model.model.lm_head.modules_to_save["default"].weight,
                       pm.base_model.model.lm_head.modules_to_save["default"].weight)
