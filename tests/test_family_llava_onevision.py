"""LLaVA-OneVision: anyres tiling (a sample's only image costs its base view, its tiles and a newline per tile row; each
image of a multi-image sample its base view and one newline), the base view as the attention grid, `model.image_newline`
outside the projector, the images-first template, and the real-size preset's geometry."""
import numpy as np
import pytest
import torch
from PIL import Image

from vlmnb.attention import attention_maps, image_token_layout
from vlmnb.collate import VLMCollator, loss_runs, render
from vlmnb.data import colour_shapes
from vlmnb.load import ARCHS, component_of, model_summary, preset_model, tiny_model
from vlmnb.lora import LoraSpec, apply_lora, snapshot

T = "llava_onevision"


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(T)


def one_image(text="What colour is it?", n=1):
    return [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}]


def batch_of(processor, images: list[list]):
    texts = [render(processor, one_image(n=len(ims)), generation_prompt=True) for ims in images]
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def image_runs(processor, ids) -> list[tuple[int, int]]:
    mask = np.concatenate([[0], (ids == processor.image_token_id).numpy().astype(int), [0]])
    edges = np.flatnonzero(np.diff(mask))
    return list(zip(edges[::2], edges[1::2]))


def embeds_into_language_model(model, batch) -> torch.Tensor:
    "The input embeddings the language model receives (image features scattered into the text)."
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(lambda m, a, kw: seen.update(e=kw["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad(): model.eval()(**batch)
    finally: hook.remove()
    return seen["e"][0]


def test_builder_agrees_with_its_config(tiny):
    "Processor and model count image tokens from the same geometry: 4x4 base view, same pinpoints, same anyres cap."
    m, p = tiny
    v = m.config.vision_config
    assert p.num_image_tokens == (v.image_size // v.patch_size) ** 2 == 16
    assert p.vision_feature_select_strategy == m.config.vision_feature_select_strategy == "full"  # SigLIP has no class token
    assert p.vision_aspect_ratio == m.config.vision_aspect_ratio == "anyres_max_9"
    assert p.image_processor.image_grid_pinpoints == m.config.image_grid_pinpoints
    assert p.image_token_id == m.config.image_token_id and p.video_token_id == m.config.video_token_id
    assert type(p).__name__ == "LlavaOnevisionImageOnlyProcessor" and not hasattr(p, "video_processor")


# (width, height) -> image tokens of a one-image sample: 16 base + the unpadded tile grid + one newline per grid row
SIZES = {(64, 64): 16 + 4 * 4 + 4, (64, 48): 16 + 4 * 6 + 4, (32, 64): 16 + 8 * 4 + 8, (64, 32): 16 + 4 * 8 + 4}


@pytest.mark.parametrize("size", SIZES)
def test_token_count_depends_on_the_image_size(tiny, size):
    "The processor's count (written out by hand here) is what the model fills: a mismatch would fail the forward pass."
    m, p = tiny
    batch = batch_of(p, [[Image.new("RGB", size, (200, 30, 30))]])
    assert int((batch["input_ids"] == p.image_token_id).sum()) == SIZES[size]
    with torch.no_grad(): feats = m.model.get_image_features(batch["pixel_values"], batch["image_sizes"], batch_num_images=batch["batch_num_images"])
    assert [f.shape[0] for f in feats.pooler_output] == [SIZES[size]]


def test_multi_image_samples_use_the_base_view_only(tiny):
    "Each image of a two-image sample is its 16 base tokens and one newline; a one-image row of the same batch keeps its tiles."
    m, p = tiny
    wide, square = Image.new("RGB", (64, 32), (0, 0, 200)), Image.new("RGB", (64, 64), (200, 0, 0))
    batch = batch_of(p, [[wide, square], [wide]])
    assert batch["batch_num_images"].tolist() == [2, 1]
    assert [e - s for s, e in image_runs(p, batch["input_ids"][0])] == [17, 17]
    assert [e - s for s, e in image_runs(p, batch["input_ids"][1])] == [SIZES[(64, 32)]]
    with torch.no_grad(): out = m.eval()(**batch)
    assert torch.isfinite(out.logits).all()


def test_anyres_cap_shrinks_the_tile_grid():
    "anyres_max_N: a tile grid over N base views is downsampled; processor and model must apply the same cap."
    m, p = tiny_model(T)
    pins = [[32, 32], [64, 64]]
    m.config.image_grid_pinpoints = p.image_processor.image_grid_pinpoints = pins
    image = [[Image.new("RGB", (64, 64), (0, 150, 0))]]
    counts = {}
    for cap in ("anyres_max_9", "anyres_max_1"):
        m.config.vision_aspect_ratio = p.vision_aspect_ratio = cap
        batch = batch_of(p, image)
        counts[cap] = int((batch["input_ids"] == p.image_token_id).sum())
        with torch.no_grad(): m.eval()(**batch)  # raises if the model's features differ from the processor's count
    assert counts == {"anyres_max_9": 16 + 8 * 8 + 8, "anyres_max_1": 16 + 4 * 4 + 4}


def test_attention_grid_is_the_base_view_in_row_major_order(tiny):
    "image_token_layout: the first 16 tokens of the first image are the base view, patch (r, c) at r * 4 + c; tiles follow."
    m, p = tiny
    sample = colour_shapes(4, seed=7)[0]
    batch = batch_of(p, [list(sample["images"])])
    pos, shape = image_token_layout(m, p, batch)
    assert shape == (4, 4)
    start, end = image_runs(p, batch["input_ids"][0])[0]
    assert pos.tolist() == list(range(start, start + 16)) and end - start == SIZES[sample["images"][0].size]
    embeds = embeds_into_language_model(m, batch)
    with torch.no_grad():  # the base view alone: the whole image resized to 32x32, through the tower and the projector
        base = m.model.vision_tower(batch["pixel_values"][0, :1], output_hidden_states=True).hidden_states[-1][0]
        base = m.model.multi_modal_projector(base)
    torch.testing.assert_close(embeds[pos], base)
    tiles = embeds[start + 16:end]  # 4 rows of 4 tile features, each row ended by image_newline
    newline = [i for i, t in enumerate(tiles) if torch.equal(t, m.model.image_newline.data)]
    assert newline == [4, 9, 14, 19]
    maps = attention_maps(m, p, sample, answer="red")
    assert maps.shape == (4, 4) and maps.weights.shape[-1] == 16 and np.isclose(maps.grid().sum(), 1)


@pytest.mark.parametrize("size", [(64, 64), (64, 48)])
def test_sample_view_draws_the_base_grid(tiny, size):
    "The sample inspector's grid is the 4x4 base view, not a square guessed from the run (36 tokens at 64x64 would read 6x6)."
    from vlmnb.collate import view_sample
    _, p = tiny
    sample = {"messages": one_image() + [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
              "images": [Image.new("RGB", size)]}
    assert view_sample(VLMCollator(p, model_type=T), sample).grid == (4, 4)


def test_attention_layout_refuses_a_grid_it_cannot_read(tiny):
    m, p = tiny
    batch = batch_of(p, [[Image.new("RGB", (64, 64))]])
    m.config.vision_feature_select_strategy = "default"  # drops a SigLIP patch: the base view is no longer a 4x4 grid
    try:
        with pytest.raises(ValueError, match="no 4x4 base view"): image_token_layout(m, p, batch)
    finally: m.config.vision_feature_select_strategy = "full"


def test_image_newline_is_outside_the_projector_and_stays_frozen():
    "Like LLaVA-NeXT: `model.image_newline` is a trained parameter of its own; LoRA with projector=True trains the projector only."
    model, processor = tiny_model(T)
    assert component_of("model.image_newline", ARCHS[T]) == "other" and "image_newline" in ARCHS[T].caveats
    assert {r["component"]: r["parameters"] for r in model_summary(model).rows}["other"] == model.config.text_config.hidden_size
    peft = apply_lora(model, LoraSpec(projector=True))
    newline = peft.get_base_model().model.image_newline
    before = newline.detach().clone()
    assert not newline.requires_grad
    proj = [p for n, p in peft.named_parameters() if "multi_modal_projector" in n and "modules_to_save" in n]
    assert proj and all(p.requires_grad for p in proj)
    batch = VLMCollator(processor, model_type=T)(list(colour_shapes(2, seed=4)))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    before_proj = snapshot(peft, "projector")
    peft(**batch).loss.backward(); opt.step()
    assert torch.equal(newline, before)
    after_proj = snapshot(peft, "projector")
    assert any(not torch.equal(before_proj[n], after_proj[n]) for n in before_proj if "modules_to_save" in n)  # trained in full


def test_template_puts_images_first_and_writes_no_system_prompt(tiny):
    "The real template writes every <image> (and a newline) before the turn's text, wherever the item sits; no default system."
    _, p = tiny
    messages = [{"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"}, {"type": "text", "text": "which colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    assert render(p, messages) == "<|im_start|>user\n<image>\nLook: which colour?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    assert render(p, messages[:1], generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")
    batch = VLMCollator(p, model_type=T)([{"messages": messages, "images": [Image.new("RGB", (64, 64))]}])
    assert loss_runs(batch, p) == ["red<|im_end|>"]
    assert p.tokenizer.bos_token is None and p.tokenizer.eos_token == "<|im_end|>" and p.tokenizer.pad_token == "<|endoftext|>"


def test_preset_has_the_real_geometry():
    "llava-onevision-qwen2-0.5b-ov-hf's sizes on the meta device (894M parameters, as its model card says)."
    model, processor = preset_model("llava-onevision-0.5b", device="meta")
    c = model.config
    assert (c.text_config.hidden_size, c.text_config.num_hidden_layers, c.text_config.vocab_size) == (896, 24, 152000)
    assert (c.vision_config.image_size, c.vision_config.patch_size, c.vision_config.num_hidden_layers) == (384, 14, 26)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 894
    assert processor.num_image_tokens == 729 and processor.image_processor.image_grid_pinpoints == c.image_grid_pinpoints
    assert len(c.image_grid_pinpoints) == 36 and c.image_grid_pinpoints[-1] == [2304, 2304]
    assert processor._get_number_of_features(384, 384, 384, 384) == 729 + 729 + 27  # base + one tile + its row newlines
    assert processor._get_number_of_features(2304, 2304, 384, 384) == 7371  # anyres_max_9: the largest a single image costs
