"""Collation beyond the notebook's golden table: mixed batches with padding for every architecture, the real
checkpoints' chat templates (no {% generation %} markers), and the budget CLI end to end."""
import json, subprocess, sys
from pathlib import Path

import pytest
import torch

from vlmnb.collate import VLMCollator, loss_runs, token_budget, fit_to_budget
from vlmnb.data import colour_shapes, count_shapes
from vlmnb.load import TINY_ARCHS, tiny_model

from chat_templates import TEMPLATES

END = {"llava": "</s>", "llava_next": "</s>", "idefics3": "<end_of_utterance>", "smolvlm": "<end_of_utterance>",
       "qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>", "gemma3": "<end_of_turn>",
       "mllama": "<|eot_id|>", "paligemma": "<eos>", "idefics2": "<end_of_utterance>",
       "aya_vision": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", "gemma4": "<turn|>",
       "qwen3_5": "<|im_end|>", "qwen3_5_moe": "<|im_end|>", "internvl": "<|im_end|>",
       "glm4v": "<|user|>", "glm4v_moe": "<|user|>", "glm46v": "<|user|>",
       "llava_onevision": "<|im_end|>"}


@pytest.fixture(scope="module")
def samples():
    colour, count = colour_shapes(3, seed=5), count_shapes(3, seed=5)
    two = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                      {"type": "text", "text": "How many shapes in both pictures together?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a few more than I would like to count"}]}],
           "images": [colour[1]["images"][0], count[1]["images"][0]], "source_index": 99}
    return [colour[0], two, count[2]]


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_mixed_batch_padding_and_labels(model_type, samples):
    model, processor = tiny_model(model_type)
    collator = VLMCollator(processor, model_type=model_type)
    batch = collator(samples)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1, "samples of different lengths"
    for row, s in enumerate(samples):
        answer = s["messages"][-1]["content"][0]["text"]
        assert [r.lstrip(" ") for r in loss_runs(batch, processor, row)] == [answer + END[model_type]]
        pad = batch["attention_mask"][row] == 0
        assert (batch["labels"][row][pad] == -100).all()
        assert not pad[: lengths[row]].any(), "padding is on the right"
    assert torch.isfinite(model(**batch).loss)


# The real checkpoints' templates mostly carry no {% generation %} markers; vlmnb must not need them.
# (tests/chat_templates.py has templates in the shape of every family's real one; test_real_templates.py the golden cases.)
REAL_TEMPLATES = {t: TEMPLATES[t] for t in ("smolvlm", "qwen2_vl", "qwen3_5")}


@pytest.mark.parametrize("model_type", sorted(REAL_TEMPLATES))
def test_real_templates_without_generation_markers(model_type, samples):
    _, processor = tiny_model(model_type)
    ours = VLMCollator(processor, model_type=model_type)(samples)
    processor.chat_template = REAL_TEMPLATES[model_type]
    assert "{% generation %}" not in processor.chat_template
    real = VLMCollator(processor, model_type=model_type)(samples)
    assert torch.equal(ours["input_ids"], real["input_ids"])
    assert torch.equal(ours["labels"], real["labels"])


def test_answer_missing_from_template_is_named(samples):
    _, processor = tiny_model("smolvlm")
    processor.chat_template = processor.chat_template.replace("{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<end_of_utterance>' }}",
                                                              "{% endif %}{% endfor %}{% endif %}{{ '<end_of_utterance>' }}")
    with pytest.raises(ValueError, match=r"sample 99: turn 1's answer 'a few more than"):
        VLMCollator(processor, model_type="smolvlm")([samples[1]])


def test_budget_fit_then_collate_never_cuts_images():
    _, processor = tiny_model("idefics3")
    collator = VLMCollator(processor, model_type="idefics3")
    ds = count_shapes(12, seed=3)  # 37 tokens each: image tokens end at 21, the answer starts at 34
    kept, fit = fit_to_budget(ds, token_budget(ds, collator, max_length=35))
    assert fit.kept == 12 and fit.truncated == list(range(12)) and not fit.dropped
    batch = VLMCollator(processor, model_type="idefics3", max_length=35)([kept[i] for i in range(len(kept))])
    assert batch["input_ids"].shape[1] == 35 and ((batch["labels"] != -100).sum(1) == 1).all()
    # every image kept whole: 19 vision tokens per image (two markers, a global token and 16 image tokens)
    assert (torch.isin(batch["input_ids"], torch.tensor(collator.vision_ids)).sum(1) == 19).all()
    kept, fit = fit_to_budget(ds, token_budget(ds, collator, max_length=20))
    assert len(kept) == 0 and {p.kind for p in fit.dropped} == {"image_past_max_length"}
    with pytest.raises(ValueError, match="empty batch"): collator([])


def test_budget_cli(tmp_path):
    tiny_model("qwen2_vl", tmp_path / "qwen")
    records = []
    for i, s in enumerate(colour_shapes(4, seed=1, size=64)):
        s["images"][0].save(tmp_path / f"{i}.png")
        records.append({"image": f"{i}.png", "prompt": "Colour?", "completion": s["answer"]})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    exe = Path(sys.executable).parent / "vlmnb"
    run = subprocess.run([str(exe), "data", "budget", str(tmp_path / "d.jsonl"), "--model", str(tmp_path / "qwen"),
                          "--max-length", "40", "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["n_over"] == 4 and all("max_pixels" in s["fix"] for s in report["samples"])
    ok = subprocess.run([str(exe), "data", "budget", str(tmp_path / "d.jsonl"), "--model", str(tmp_path / "qwen"), "--max-length", "200"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "0 over max_length=200" in ok.stdout


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_train_on_inputs_labels_all_text_but_vision_and_padding(model_type, samples):
    _, processor = tiny_model(model_type)
    collator = VLMCollator(processor, model_type=model_type, train_on_inputs=True)
    batch = collator(samples)
    vision = torch.isin(batch["input_ids"], torch.tensor(collator.vision_ids))
    expected = batch["attention_mask"].bool() & ~vision
    assert torch.equal(batch["labels"] != -100, expected)
    assert torch.equal(batch["labels"][expected], batch["input_ids"][expected])
    text = processor.tokenizer.decode(batch["labels"][1][batch["labels"][1] != -100])
    assert "How many shapes in both pictures together?" in text and "a few more than I would like to count" in text
