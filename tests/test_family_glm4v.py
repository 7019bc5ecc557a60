"""GLM-4.1V / GLM-4.5V / GLM-4.6V facts: the real GLM-4.1V template writes list content of assistant and system turns as a
Python repr (vlmnb renders text-only turns as strings for it); no token follows the last answer (vlmnb appends `<|user|>`, as
GLM's own fine-tuning does); 3D positions need `mm_token_type_ids` and `image_grid_thw`; MoE experts are fused parameters
that LoRA cannot adapt."""
import pytest
import torch

import vlmnb.collate as collate
from chat_templates import real_like_processor
from vlmnb.collate import VLMCollator, loss_runs, render
from vlmnb.data import colour_shapes
from vlmnb.load import ARCHS, tiny_model

IMAGES = [colour_shapes(2, seed=3)[k]["images"][0] for k in range(2)]


def user(text, n=0): return {"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}
def assistant(text): return {"role": "assistant", "content": [{"type": "text", "text": text}]}
def system(text): return {"role": "system", "content": [{"type": "text", "text": text}]}


MULTI = [system("Be brief."), user("Colour?", 1), assistant("red"), user("Sure?"), assistant("yes")]


@pytest.fixture(scope="module")
def glm():
    return tiny_model("glm4v")


def test_real_template_list_content_is_rendered_as_text_not_repr(monkeypatch):
    "The real GLM-4.1V template prints an assistant/system list as its repr; vlmnb's render gives it their text instead."
    proc = real_like_processor("glm4v")
    text = render(proc, MULTI)
    assert "'type'" not in text and "<|system|>\nBe brief.<|user|>" in text and "<|assistant|>\nred<|user|>" in text
    assert text.endswith("<|assistant|>\nyes")
    monkeypatch.setattr(collate, "_repr_roles", lambda *a: frozenset())  # without it, the template's own output
    raw = render(proc, MULTI)
    assert "[{'type': 'text', 'text': 'red'}]" in raw and "[{'type': 'text', 'text': 'Be brief.'}]" in raw


def test_zoo_template_needs_no_flattening_and_renders_like_the_real_one(glm):
    _, proc = glm
    assert collate._repr_roles(proc.chat_template, proc) == frozenset()
    assert collate._repr_roles(real_like_processor("glm4v").chat_template, real_like_processor("glm4v")) == {"system", "assistant"}
    assert render(proc, MULTI) == render(real_like_processor("glm4v"), MULTI)
    assert render(proc, MULTI[:2], generation_prompt=True).endswith("<|assistant|>\n")


@pytest.mark.parametrize("real", [False, True])
def test_user_token_ends_every_answer_once(glm, real):
    "The next turn's <|user|> carries the loss after an earlier answer; one <|user|> is appended after the last; no eos inserted."
    proc = real_like_processor("glm4v") if real else glm[1]
    collator = VLMCollator(proc, model_type="glm4v")
    assert collator.eos_appended and collator.stop_token == "<|user|>" and "appends <|user|>" in collator.stop_note
    batch = collator([{"messages": MULTI, "images": IMAGES[:1]}])
    ids, labels, tok = batch["input_ids"][0].tolist(), batch["labels"][0], proc.tokenizer
    user_id = tok.convert_tokens_to_ids("<|user|>")
    assert ids.count(user_id) == 3 and tok.eos_token_id not in ids  # two user turns and the appended one
    assert ids[-1] == user_id and labels[-1] == user_id
    assert loss_runs(batch, proc) == ["red<|user|>", "yes<|user|>"]
    first = ids.index(user_id)
    assert labels[first] == -100, "the <|user|> that opens the conversation carries no loss"


def test_prefix_written_once_without_label(glm):
    _, proc = glm
    batch = VLMCollator(proc, model_type="glm4v")([{"messages": MULTI, "images": IMAGES[:1]}, {"messages": MULTI[1:3], "images": IMAGES[:1]}])
    g, s = (proc.tokenizer.convert_tokens_to_ids(t) for t in ("[gMASK]", "<sop>"))
    for row in range(2):
        ids = batch["input_ids"][row].tolist()
        assert ids[:2] == [g, s] and ids.count(g) == 1 and ids.count(s) == 1
        assert (batch["labels"][row][:2] == -100).all()


def test_generation_stops_on_the_user_token(glm):
    from vlmnb.eval import end_of_turn_ids
    _, proc = glm
    tok = proc.tokenizer
    assert tok.convert_tokens_to_ids("<|user|>") in end_of_turn_ids(proc, ARCHS["glm4v"])
    assert tok.convert_tokens_to_ids("<|user|>") not in end_of_turn_ids(proc)  # the template alone does not say it


def test_batch_carries_what_3d_positions_need(glm):
    "mm_token_type_ids and image_grid_thw reach the model; its 3D positions give the image tokens a grid, and it refuses without them."
    model, proc = glm
    samples = [{"messages": [user("Which colours?", 2), assistant("red and blue")], "images": IMAGES[:2]},
               {"messages": [user("Colour?", 1), assistant("red")], "images": IMAGES[:1]}]
    batch = VLMCollator(proc, model_type="glm4v")(samples)
    assert {"mm_token_type_ids", "image_grid_thw", "pixel_values"} <= set(batch)
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image|>")
    assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == image_id)
    pos, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                                        attention_mask=batch["attention_mask"])
    img = (batch["input_ids"][1] == image_id).nonzero().flatten()
    _, h, w = batch["image_grid_thw"][-1].tolist()
    rows, cols = pos[1, 1, img], pos[2, 1, img]  # height and width positions of the second row's image
    assert len(set(rows.tolist())) == h // 2 and len(set(cols.tolist())) == w // 2 and len(set(pos[0, 1, img].tolist())) == 1
    assert torch.isfinite(model(**batch).loss)
    bare = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        model(**bare)


def test_truncation_keeps_the_position_inputs_aligned(glm):
    _, proc = glm
    sample = {"messages": [user("Colour?", 1), assistant("a red circle and a red square and more")], "images": IMAGES[:1]}
    full = VLMCollator(proc, model_type="glm4v")([sample])
    n = full["input_ids"].shape[1] - 3
    cut = VLMCollator(proc, model_type="glm4v", max_length=n)([sample])
    assert cut["mm_token_type_ids"].shape == cut["input_ids"].shape == (1, n)


def test_attention_layout_is_the_merged_grid(glm):
    from vlmnb.attention import image_token_layout
    model, proc = glm
    batch = proc(text=[render(proc, [user("Colour?", 1)], generation_prompt=True)], images=[IMAGES[:1]], return_tensors="pt")
    pos, shape = image_token_layout(model, proc, batch)
    _, h, w = batch["image_grid_thw"][0].tolist()
    assert shape == (h // 2, w // 2) and len(pos) == shape[0] * shape[1]
    assert (batch["input_ids"][0, pos] == proc.tokenizer.convert_tokens_to_ids("<|image|>")).all()
    assert batch["input_ids"][0, pos[0] - 1] == proc.tokenizer.convert_tokens_to_ids("<|begin_of_image|>")


@pytest.mark.parametrize("model_type", ["glm4v_moe", "glm46v"])
def test_moe_experts_are_fused_and_left_out_with_a_note(model_type):
    from vlmnb.lora import LoraSpec, apply_lora, lora_report, lora_targets
    model, _ = tiny_model(model_type)
    experts = model.model.language_model.layers[1].mlp.experts
    assert not isinstance(experts, torch.nn.Linear) and experts.gate_up_proj.dim() == 3  # fused, not Linear
    names = lora_targets(model, LoraSpec())
    assert not any(".experts." in n for n in names) and any(".shared_experts." in n for n in names)
    report = lora_report(apply_lora(model, LoraSpec()))
    assert report.notes and "fused 3D tensors" in report.notes[0] and "LoRA cannot adapt them" in report._repr_markdown_()
    assert not experts.gate_up_proj.requires_grad


def test_dense_glm_report_has_no_expert_note(glm):
    from vlmnb.lora import LoraSpec, apply_lora, lora_report
    model, _ = tiny_model("glm4v")
    assert lora_report(apply_lora(model, LoraSpec())).notes == []
