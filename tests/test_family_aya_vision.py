"""Aya Vision: tiles and a global thumbnail per image, pixel-shuffled patches, the two-token answer end, Cohere2's logit
scale and tied embeddings; all on the tiny zoo model."""
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vlmnb.attention import attention_maps, image_token_layout
from vlmnb.collate import VLMCollator, loss_runs, render, template_end_of_turn
from vlmnb.data import colour_shapes
from vlmnb.eval import end_of_turn_ids
from vlmnb.load import load_model, tiny_model

END = "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"


@pytest.fixture(scope="module")
def zoo():
    return tiny_model("aya_vision")


def one_image(text="What colour is it?", answer="red"):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def encode(p, size):
    text = render(p, one_image())
    return p(text=[text], images=[[Image.new("RGB", size, (200, 30, 30))]], return_tensors="pt", add_special_tokens=False)


def test_tiles_and_global_thumbnail(zoo):
    "A wide image is cut into 2 tiles plus the global thumbnail (16 tokens each); a square one is the thumbnail alone."
    _, p = zoo
    tok = p.tokenizer
    patch = tok.convert_tokens_to_ids("<|IMG_PATCH|>")
    wide, square = encode(p, (64, 32)), encode(p, (32, 32))
    assert tuple(wide["pixel_values"].shape) == (3, 3, 32, 32) and tuple(square["pixel_values"].shape) == (1, 3, 32, 32)
    assert (wide["input_ids"] == patch).sum() == 3 * 16 and (square["input_ids"] == patch).sum() == 16
    text = tok.decode(wide["input_ids"][0])
    assert text.index("<|START_OF_IMG|>") < text.index("TILE_1") < text.index("TILE_2") < text.index("TILE_GLOBAL") < text.index("<|END_OF_IMG|>")
    assert "TILE_1" not in tok.decode(square["input_ids"][0]) and "TILE_GLOBAL" in tok.decode(square["input_ids"][0])
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in ("<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>"))


def test_layout_is_the_global_thumbnail(zoo):
    "image_token_layout maps the first image's global thumbnail (the whole image): its 4x4 patch tokens, after TILE_GLOBAL."
    m, p = zoo
    tok = p.tokenizer
    for size, tiles in (((64, 32), 2), ((32, 32), 0)):
        batch = encode(p, size)
        pos, shape = image_token_layout(m, p, batch)
        ids = batch["input_ids"][0].numpy()
        patch = np.flatnonzero(ids == tok.convert_tokens_to_ids("<|IMG_PATCH|>"))
        assert shape == (4, 4) and len(pos) == 16
        assert pos.tolist() == patch[-16:].tolist() and pos.tolist() == list(range(pos[0], pos[0] + 16))
        assert tok.decode(ids[:pos[0]]).endswith("TILE_GLOBAL") and ids[pos[-1] + 1] == tok.convert_tokens_to_ids("<|END_OF_IMG|>")
        assert len(patch) == 16 * (tiles + 1)


def test_layout_takes_the_first_image(zoo):
    m, p = zoo
    s = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Both?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
         "images": [Image.new("RGB", (64, 32)), Image.new("RGB", (32, 32))]}
    batch = p(text=[render(p, s["messages"])], images=[s["images"]], return_tensors="pt", add_special_tokens=False)
    pos, _ = image_token_layout(m, p, batch)
    ids = batch["input_ids"][0].numpy()
    first_end = np.flatnonzero(ids == p.tokenizer.convert_tokens_to_ids("<|END_OF_IMG|>"))[0]
    assert pos[-1] + 1 == first_end  # the first image's thumbnail, not the second image


def test_attention_maps_on_the_thumbnail_grid(zoo):
    m, p = zoo
    maps = attention_maps(m, p, colour_shapes(4, seed=7)[0], answer="red")
    assert maps.shape == (4, 4) and maps.weights.shape[-1] == 16 and maps.weights.shape[0] == 2
    assert np.isclose(maps.grid().sum(), 1) and 0 < maps.image_mass() <= 1


def test_pixel_shuffle_keeps_rows_and_columns(zoo):
    "The projector folds each 2x2 block of the 8x8 patch grid into one token, row-major: token (i, j) is block (i, j)."
    m, _ = zoo
    proj = m.model.multi_modal_projector
    x = torch.zeros(1, 64, 32)
    x[0, :, 0] = torch.arange(64).float()  # channel 0 holds each patch's row-major position
    out = proj.pixel_shuffle(x)
    assert tuple(out.shape) == (1, 4, 4, 4 * 32)
    for i in range(4):
        for j in range(4):
            assert sorted(out[0, i, j, 0::32].tolist()) == [16 * i + 2 * j + d for d in (0, 1, 8, 9)]
    feats = m.model.get_image_features(pixel_values=torch.zeros(3, 3, 32, 32)).pooler_output
    feats = feats if torch.is_tensor(feats) else torch.cat(list(feats))
    assert feats.reshape(-1, 64).shape[0] == 3 * 16  # as many features as the processor writes patch tokens


def test_both_end_tokens_carry_loss_and_stop_generation(zoo):
    "The answer's <|END_RESPONSE|> and the eos <|END_OF_TURN_TOKEN|> are labelled; <|START_RESPONSE|> and the system turn are not."
    _, p = zoo
    tok = p.tokenizer
    assert template_end_of_turn(p) == END and tok.eos_token == "<|END_OF_TURN_TOKEN|>"
    collator = VLMCollator(p, model_type="aya_vision")
    assert not collator.eos_appended and "answers end with <|END_RESPONSE|><|END_OF_TURN_TOKEN|>" in collator.stop_note
    msgs = one_image() + [{"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]
    batch = collator([{"messages": msgs, "images": [Image.new("RGB", (64, 32))]}])
    assert loss_runs(batch, p) == ["red" + END, "yes" + END]
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tok.convert_tokens_to_ids("<|START_RESPONSE|>") not in labelled
    assert tok.convert_tokens_to_ids("<|START_OF_TURN_TOKEN|>") not in labelled  # the next turn's opening is not the end
    assert set(end_of_turn_ids(p)) == {tok.convert_tokens_to_ids("<|END_RESPONSE|>"), tok.eos_token_id}


def test_default_system_turn_and_its_replacement(zoo):
    "Without a system message the template writes a default system turn; a system message replaces it; neither is labelled."
    _, p = zoo
    plain = render(p, one_image())
    told = render(p, [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}] + one_image())
    assert plain.count("<|SYSTEM_TOKEN|>") == 1 and told.count("<|SYSTEM_TOKEN|>") == 1 and "Be brief." in told
    assert render(p, one_image()[:1], generation_prompt=True).endswith("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    batch = VLMCollator(p, model_type="aya_vision")([{"messages": one_image(), "images": [Image.new("RGB", (32, 32))]}])
    assert loss_runs(batch, p) == ["red" + END]
    assert batch["input_ids"][0].tolist().count(p.tokenizer.bos_token_id) == 1


def test_logit_scale_and_tied_embeddings(zoo, tmp_path):
    """Cohere2ForCausalLM multiplies its logits by logit_scale, but transformers' AyaVisionForConditionalGeneration runs the
    bare Cohere2Model and its own lm_head: its logits are NOT scaled (vLLM's Aya Vision, built on Cohere2ForCausalLM, scales
    them). lm_head shares the input embeddings, also after a save and load."""
    m, p = zoo
    cfg = m.config.text_config
    assert cfg.logit_scale != 1 and m.config.tie_word_embeddings
    emb = m.get_input_embeddings().weight
    assert m.lm_head.weight.data_ptr() == emb.data_ptr()
    ids = torch.tensor([[p.tokenizer.bos_token_id, 300, 301, 302]])
    m.eval()
    with torch.no_grad():
        out = m(input_ids=ids, output_hidden_states=True)
        unscaled = out.hidden_states[-1] @ emb.T  # the last hidden state is after the final norm
        text_only = transformers.Cohere2ForCausalLM(cfg).eval()
        text_only.model.load_state_dict(m.model.language_model.state_dict()); text_only.lm_head.weight = m.lm_head.weight
        scaled = text_only(input_ids=ids).logits
    torch.testing.assert_close(out.logits, unscaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled, unscaled * cfg.logit_scale, rtol=1e-5, atol=1e-5)
    tiny_model("aya_vision", tmp_path / "aya")
    loaded, _ = load_model(tmp_path / "aya")
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    with torch.no_grad(): torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, out.logits)
