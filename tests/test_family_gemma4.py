"""Gemma 4 facts vlmnb relies on, checked on the tiny model: an image-only processor that keeps the audio feature
extractor (real checkpoints ship one, and the processor insists on the audio markers); variable image tokens between
`<|image>` and `<image|>` on a row-major grid of pooled patches; `mm_token_type_ids` from the collator, which switch on
bidirectional attention within each image on the sliding layers; the `<|turn>`/`<turn|>` turns and the empty thought
channel of the generation prompt; a vision-only config is not called omni."""
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from chat_templates import real_like_processor
from vlmnb.attention import attention_maps, image_token_layout
from vlmnb.collate import VLMCollator, loss_runs, render
from vlmnb.data import colour_shapes
from vlmnb.eval import prompt_of
from vlmnb.load import ARCHS, load_model, model_kind, tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("gemma4")


def one(image, text="What colour is the circle?", answer="red"):
    return {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}], "images": [image]}


def test_image_only_processor_keeps_the_audio_feature_extractor(tiny, tmp_path):
    "Real Gemma 4 processors have an audio feature extractor (numpy only): kept; the video slot (torchvision) is not."
    model, proc = tiny
    assert type(proc).__name__ == "Gemma4ImageOnlyProcessor"
    assert type(proc).get_attributes() == ["feature_extractor", "image_processor", "tokenizer"]
    assert isinstance(proc.feature_extractor, transformers.Gemma4AudioFeatureExtractor)
    assert model.config.audio_config is None and model.model.audio_tower is None  # the tiny model is vision + text
    tiny_model("gemma4", tmp_path / "g")
    _, loaded = load_model(tmp_path / "g")
    assert type(loaded).__name__ == "Gemma4ImageOnlyProcessor" and loaded.chat_template == proc.chat_template
    assert loaded.image_seq_length == proc.image_seq_length == 70  # the family's own keywords survive save and load


def test_processor_needs_the_audio_markers_in_the_tokenizer(tiny):
    "Gemma4Processor refuses any input when the tokenizer has no boa/eoa token (even without audio): the tiny one has them."
    _, proc = tiny
    assert (proc.boa_token, proc.eoa_token, proc.audio_token) == ("<|audio>", "<audio|>", "<|audio|>")
    for name in ("boa_token", "eoa_token", "audio_token", "image_token", "boi_token", "eoi_token"):
        assert getattr(proc.tokenizer, name) in proc.tokenizer.get_vocab()  # real special tokens, not grown at load time


@pytest.mark.parametrize("size,grid", [((64, 64), (8, 8)), ((64, 48), (7, 9)), ((32, 96), (14, 4)), ((200, 100), (5, 11))])
def test_image_tokens_and_grid(tiny, size, grid):
    "Aspect ratio kept, the image scaled to fill a budget of 70 pooled tokens: rows x cols tokens between <|image> and <image|>."
    model, proc = tiny
    image = Image.new("RGB", size, (200, 30, 30))
    collator = VLMCollator(proc, model_type="gemma4")
    batch = collator([one(image)])
    ids = batch["input_ids"][0].tolist()
    tok = proc.tokenizer
    start, end = ids.index(tok.convert_tokens_to_ids("<|image>")), ids.index(tok.convert_tokens_to_ids("<image|>"))
    n = end - start - 1
    assert set(ids[start + 1:end]) == {tok.convert_tokens_to_ids("<|image|>")} and n == grid[0] * grid[1] <= 70
    positions, shape = image_token_layout(model, proc, batch)
    assert shape == grid and positions.tolist() == list(range(start + 1, end))


def test_collator_passes_mm_token_type_ids_for_image_tokens_only(tiny):
    model, proc = tiny
    samples = list(colour_shapes(3, seed=1))
    samples[1] = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Both?"}]},
                               {"role": "assistant", "content": [{"type": "text", "text": "two shapes"}]}],
                  "images": [samples[1]["images"][0], samples[2]["images"][0]]}
    batch = VLMCollator(proc, model_type="gemma4")(samples[:2])
    image = batch["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<|image|>")
    assert torch.equal(batch["mm_token_type_ids"] == 1, image) and not (batch["mm_token_type_ids"] > 1).any()
    assert (batch["labels"][image] == -100).all()
    assert model.config.text_config.use_bidirectional_attention == "vision"  # as the 26B and 31B checkpoints
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_image_tokens_attend_to_each_other_only_with_mm_token_type_ids(tiny):
    "With mm_token_type_ids an image token also sees the later tokens of its image (sliding layers); the text before it is unchanged."
    model, proc = tiny
    model.eval()
    batch = VLMCollator(proc, model_type="gemma4")([one(colour_shapes(1, seed=2)[0]["images"][0])])
    first = int(torch.nonzero(batch["mm_token_type_ids"][0])[0])

    def states(b):
        with torch.no_grad(): return model(**b, output_hidden_states=True).hidden_states[-1][0]
    with_ids, without = states(batch), states({k: v for k, v in batch.items() if k != "mm_token_type_ids"})
    assert not torch.allclose(with_ids[first], without[first], atol=1e-5)
    assert torch.allclose(with_ids[:first], without[:first], atol=1e-6)


def test_turns_end_with_turn_token_and_answers_are_trimmed(tiny):
    _, proc = tiny
    s = one(colour_shapes(1, seed=3)[0]["images"][0], answer="  red\n")
    text = render(proc, s["messages"])
    assert text.startswith("<bos><|turn>user\n\n\n<|image|>\n\nWhat colour is the circle?<turn|>\n<|turn>model\nred<turn|>\n")
    collator = VLMCollator(proc, model_type="gemma4")
    assert collator.end_of_turn == "<turn|>" and not collator.eos_appended
    assert loss_runs(collator([s]), proc) == ["red<turn|>"]


@pytest.mark.parametrize("template", ["zoo", "real"])
def test_generation_prompt_opens_an_empty_thought_channel(tiny, template):
    "Thinking off, the prompt ends `<|turn>model\\n<|channel>thought\\n<channel|>`; the rendered history has no channel, and the"
    " collator still finds every answer (it falls back to the prompt without the generation prompt)."
    proc = tiny[1] if template == "zoo" else real_like_processor("gemma4")
    s = one(colour_shapes(1, seed=3)[0]["images"][0])
    prompt = prompt_of(proc, ARCHS["gemma4"], s["messages"])
    assert prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>")
    assert "<|channel>" not in render(proc, s["messages"])
    assert loss_runs(VLMCollator(proc, model_type="gemma4")([s]), proc) == ["red<turn|>"]


def test_real_template_cuts_thinking_out_of_answers_and_writes_list_system_prompts_as_repr():
    proc = real_like_processor("gemma4")
    thought = {"role": "assistant", "content": [{"type": "text", "text": "<|channel>thought\nround, so a circle<channel|>red"}]}
    text = render(proc, [{"role": "user", "content": "Colour?"}, thought])
    assert text.endswith("<|turn>model\nred<turn|>\n") and "round" not in text
    system = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, {"role": "user", "content": "Hi"}]
    raw = proc.apply_chat_template(system, tokenize=False)
    assert "<|turn>system\n[{'type': 'text', 'text': 'Be brief.'}]<turn|>" in raw  # the real template's quirk
    assert "<|turn>system\nBe brief.<turn|>" in render(proc, system)  # vlmnb's render writes the text (see collate._as_strings)
    zoo = render(tiny_model("gemma4")[1], [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, {"role": "user", "content": "Hi"}])
    assert "<|turn>system\nBe brief.<turn|>" in zoo


def test_attention_maps_on_a_non_square_grid(tiny):
    model, proc = tiny
    image = colour_shapes(4, seed=7)[0]["images"][0].resize((64, 48))
    sample = one(image)
    maps = attention_maps(model, proc, sample, answer="red")
    assert maps.shape == (7, 9) and maps.weights.shape[-1] == 63
    assert np.isclose(maps.grid().sum(), 1) and 0 < maps.image_mass() <= 1


def test_vision_only_config_is_not_called_omni():
    vision = transformers.Gemma4Config(vision_config={}, audio_config=None)
    omni = transformers.Gemma4Config(vision_config={}, audio_config={})
    assert model_kind(vision) == "a vision-language model vlmnb does not support yet"
    assert "omni" in model_kind(omni)


def test_preflight_says_the_generation_prompt_adds_an_empty_thought_channel(tmp_path):
    from vlmnb.train import make_config, preflight
    notes = {}
    for t in ("gemma4", "gemma3"):
        c = make_config({"base_model": f"tiny:{t}", "datasets": [{"path": "synthetic:colour_shapes", "n": 4}],
                         "output_dir": str(tmp_path / t), "max_steps": 1})
        notes[t] = [n for n in preflight(c).notes if n.startswith("prompt:")]
    assert len(notes["gemma4"]) == 1 and "'<|channel>thought\\n<channel|>'" in notes["gemma4"][0]
    assert notes["gemma3"] == []
