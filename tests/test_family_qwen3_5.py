"""Qwen3.5 (and Qwen3.5 MoE): hybrid layers (Gated DeltaNet linear attention + gated softmax attention), what LoRA
adapts there, what attention maps can show, what padding and packing may assume, the empty think block of the chat
template, and the MoE experts LoRA cannot reach."""
import importlib.util

import pytest
import torch

from vlmnb.attention import attention_maps
from vlmnb.collate import VLMCollator, loss_runs, render, token_table
from vlmnb.data import colour_shapes
from vlmnb.eval import prompt_of
from vlmnb.load import ARCHS, tiny_model
from vlmnb.lora import LoraSpec, apply_lora, lora_report, lora_targets

LINEAR_ATTN = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")


@pytest.fixture(scope="module", params=["qwen3_5", "qwen3_5_moe"])
def tiny(request):
    return (request.param, *tiny_model(request.param))


def test_layer_types_and_module_names(tiny):
    t, model, _ = tiny
    lm = model.get_submodule(ARCHS[t].language_model)
    assert model.config.text_config.layer_types == ["linear_attention", "full_attention"]
    assert type(lm.layers[0].linear_attn).__name__.endswith("GatedDeltaNet") and not hasattr(lm.layers[0], "self_attn")
    assert type(lm.layers[1].self_attn).__name__.endswith("Attention") and not hasattr(lm.layers[1], "linear_attn")
    linear = {n.rsplit(".", 1)[-1] for n, m in lm.layers[0].linear_attn.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linear == set(LINEAR_ATTN)


def test_default_lora_adapts_both_token_mixers(tiny):
    "The default spec and the registry's regex name the same modules: every linear-attention and softmax projection."
    t, model, _ = tiny
    lm, mlp = ARCHS[t].language_model, ("mlp.shared_expert" if t == "qwen3_5_moe" else "mlp")
    want = ({f"{lm}.layers.0.linear_attn.{p}" for p in LINEAR_ATTN} | {f"{lm}.layers.1.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
            | {f"{lm}.layers.{i}.{mlp}.{p}" for i in (0, 1) for p in ("gate_proj", "up_proj", "down_proj")})
    assert set(lora_targets(model, LoraSpec())) == want
    assert set(lora_targets(model, LoraSpec(target_modules=ARCHS[t].lora_target))) == want
    assert set(lora_targets(model, LoraSpec(mlp=False))) == {n for n in want if "attn" in n}


def test_torch_fallback_of_linear_attention_runs_on_cpu(tiny):
    "No fla / causal-conv1d kernels here: the reference PyTorch path trains (finite loss, gradients into linear attention)."
    t, model, processor = tiny
    assert importlib.util.find_spec("fla") is None and importlib.util.find_spec("causal_conv1d") is None
    batch = VLMCollator(processor, model_type=t)(colour_shapes(2, seed=4))
    model.train()
    loss = model(**batch).loss
    loss.backward()
    g = model.get_submodule(ARCHS[t].language_model).layers[0].linear_attn.in_proj_qkv.weight.grad
    assert torch.isfinite(loss) and g is not None and g.abs().sum() > 0
    model.zero_grad()


def test_attention_maps_use_the_softmax_layers_and_say_so(tiny):
    t, model, processor = tiny
    maps = attention_maps(model, processor, colour_shapes(4, seed=7)[0], answer="red")
    assert maps.layers == [1] and maps.weights.shape[0] == 1  # layer 0 is linear attention: no weights
    assert "softmax-attention layers [1]" in maps.note and "Gated DeltaNet" in maps.note
    assert maps.shape == (4, 4) and maps.weights.sum() > 0 and 0 < maps.image_mass() <= 1


def test_right_padding_keeps_rows_apart(tiny):
    "Padding: a padded row's real tokens get the same logits as the row alone (right padding, and the recurrent mask)."
    t, model, processor = tiny
    samples = [colour_shapes(3, seed=5)[i] for i in range(3)]
    long = {"role": "assistant", "content": [{"type": "text", "text": "a much longer answer than the others, to pad them"}]}
    samples[1] = {**samples[1], "messages": samples[1]["messages"][:-1] + [long]}
    collator = VLMCollator(processor, model_type=t)
    model.eval()
    with torch.no_grad():
        both = collator(samples)
        assert len(set(both["attention_mask"].sum(1).tolist())) > 1
        logits = model(**{k: v for k, v in both.items() if k != "labels"}).logits
        for row in (0, 2):
            alone = collator([samples[row]])
            n = alone["input_ids"].shape[1]
            ref = model(**{k: v for k, v in alone.items() if k != "labels"}).logits
            torch.testing.assert_close(logits[row, :n], ref[0], rtol=1e-4, atol=1e-4)


def test_packed_samples_would_leak_through_linear_attention(tiny):
    """Packing two samples in one row with restarted position_ids keeps them apart in softmax attention only through
    cu_seqlens / flash-attention kwargs; the torch Gated DeltaNet ignores cu_seqlens, so the second sample sees the first.
    vlmnb therefore refuses packing for the family (Arch.no_packing), Axolotl's sample_packing included."""
    from vlmnb.collate import PackingError, check_packing
    t, model, processor = tiny
    tok = processor.tokenizer
    a, b = tok("red green blue yellow", return_tensors="pt")["input_ids"], tok("the circle is red", return_tensors="pt")["input_ids"]
    lm = model.model.language_model
    model.eval()
    with torch.no_grad():
        alone = lm(input_ids=b).last_hidden_state[0]
        packed_ids = torch.cat([a, b], 1)
        pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None]
        packed = lm(input_ids=packed_ids, position_ids=pos).last_hidden_state[0, a.shape[1]:]
    assert not torch.allclose(packed, alone, atol=1e-3), "the linear-attention layers kept packed samples apart"
    with pytest.raises(PackingError, match="Gated DeltaNet"): check_packing(ARCHS[t])


def test_think_block_is_prompt_not_answer(tiny):
    "vlmnb renders non-thinking: the prompt ends with the empty think block, the training text continues it, and only answer + <|im_end|> carry loss."
    t, _, processor = tiny
    sample = colour_shapes(1, seed=3)[0]
    arch = ARCHS[t]
    prompt = prompt_of(processor, arch, sample["messages"])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    full = render(processor, sample["messages"])
    answer = sample["messages"][-1]["content"][0]["text"]
    assert full == prompt + answer + "<|im_end|>\n"
    collator = VLMCollator(processor, model_type=t)
    assert loss_runs(collator([sample]), processor) == [answer + "<|im_end|>"]
    table = token_table(collator, sample)
    think = [r for r in table if r["text"] in ("<think>", "</think>")]
    assert len(think) == 2 and not any(r["has_loss"] for r in think)


def test_earlier_answers_have_no_think_block(tiny):
    t, _, processor = tiny
    u = lambda s: {"role": "user", "content": [{"type": "text", "text": s}]}
    a = lambda s: {"role": "assistant", "content": [{"type": "text", "text": s}]}
    text = render(processor, [u("Colour?"), a("red"), u("Sure?"), a("yes")])
    assert text.count("<think>") == 1 and text.index("<think>") > text.index("Sure?")
    batch = VLMCollator(processor, model_type=t)([{"messages": [u("Colour?"), a("red "), u("Sure?"), a("yes\n")], "images": []}])
    assert loss_runs(batch, processor) == ["red<|im_end|>", "yes<|im_end|>"]


def test_system_first_sample_table(tiny):
    "A system-first conversation renders (the template refuses a system turn alone, which the role table must survive)."
    t, _, processor = tiny
    s = {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, *colour_shapes(1, seed=2)[0]["messages"]],
         "images": colour_shapes(1, seed=2)[0]["images"]}
    table = token_table(VLMCollator(processor, model_type=t), s)
    assert {r["role"] for r in table} >= {"user", "assistant", "image"}


def test_moe_experts_are_fused_parameters_left_out_and_reported():
    model, processor = tiny_model("qwen3_5_moe")
    experts = model.model.language_model.layers[0].mlp.experts
    assert not any(isinstance(m, torch.nn.Linear) for m in experts.modules())
    assert {n for n, p in experts.named_parameters() if p.ndim == 3} == {"gate_up_proj", "down_proj"}
    pm = apply_lora(model, LoraSpec())
    report = lora_report(pm)
    assert not any(p.requires_grad for n, p in pm.named_parameters() if ".experts." in n)
    assert not any("shared_expert_gate" in n for n in report.modules)  # a one-output gate is not adapted
    assert len(report.notes) == 1 and "routed experts of 2 MoE layers" in report.notes[0] and "stay frozen" in report.notes[0]
    assert report.notes[0] in report._repr_markdown_()
    dense = lora_report(apply_lora(tiny_model("qwen3_5")[0], LoraSpec()))
    assert dense.notes == []
