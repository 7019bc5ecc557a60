"""InternVL (HF-native, model_type `internvl`): dynamic tiling, the thumbnail as the attention grid, the processor's
tiling switch, the Qwen3 language model of InternVL3.5, and the real-size preset."""
import pytest
import torch
from PIL import Image

from vlmnb.attention import image_token_layout
from vlmnb.collate import VLMCollator, image_token_cost
from vlmnb.data import colour_shapes
from vlmnb.load import ARCHS, preset_model, tiny_model
from vlmnb.lora import LoraSpec, lora_targets

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("internvl")


def encode(processor, images, **kw):
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": "?"}]}],
                                         tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[images], return_tensors="pt", **kw)


def runs(ids, token_id):
    "(start, end) of each run of `token_id`."
    out, start = [], None
    for i, t in enumerate(ids + [None]):
        if t == token_id and start is None: start = i
        elif t != token_id and start is not None: out.append((start, i)); start = None
    return out


@pytest.mark.parametrize("size,tiles", [((64, 64), 1), ((64, 48), 1), ((128, 64), 3), ((256, 64), 5), ((64, 256), 5)])
def test_tile_count(tiny, size, tiles):
    "64-px tiles, at most 4, and a thumbnail whenever there is more than one tile: 16 tokens each, between <img> and </img>."
    _, p = tiny
    b = encode(p, [Image.new("RGB", size)])
    ids = b["input_ids"][0].tolist()
    assert b["pixel_values"].shape == (tiles, 3, 64, 64)
    assert runs(ids, p.image_token_id) == [(ids.index(p.start_image_token_id) + 1, ids.index(p.end_image_token_id))]
    assert ids.count(p.image_token_id) == 16 * tiles


def test_wide_image_layout_is_the_thumbnail(tiny):
    "A 256x64 image: 4 tiles of its left-to-right strips, then the thumbnail; the attention grid is the thumbnail's 4x4 tokens."
    m, p = tiny
    img = colour_shapes(1, seed=7)[0]["images"][0].resize((256, 64))
    b = encode(p, [img])
    ids = b["input_ids"][0].tolist()
    start, end = runs(ids, p.image_token_id)[0]
    pos, shape = image_token_layout(m, p, b)
    assert shape == (4, 4) and pos.tolist() == list(range(end - 16, end)) and end - start == 80
    thumb = encode(p, [img], crop_to_patches=False)["pixel_values"][0]  # the whole image resized to one tile
    torch.testing.assert_close(b["pixel_values"][-1], thumb)
    strip = encode(p, [img.crop((0, 0, 64, 64))], crop_to_patches=False)["pixel_values"][0]
    assert not torch.allclose(b["pixel_values"][0], thumb) and torch.allclose(b["pixel_values"][0], strip, atol=0.15)


def test_layout_reads_the_first_image(tiny):
    "Two images (one tile, then five): the grid is the first image's own 16 tokens."
    m, p = tiny
    b = encode(p, [Image.new("RGB", (64, 64)), Image.new("RGB", (256, 64))])
    first, second = runs(b["input_ids"][0].tolist(), p.image_token_id)
    assert (first[1] - first[0], second[1] - second[0]) == (16, 80)
    pos, shape = image_token_layout(m, p, b)
    assert pos.tolist() == list(range(*first)) and shape == (4, 4)


def test_pixel_shuffle_keeps_a_row_major_grid(tiny):
    "Token k of a tile holds the 2x2 patches at row k // 4, column k % 4 of its 8x8 patches: the (rows, cols) reshape is right."
    m, _ = tiny
    side = 8
    patch_ids = torch.arange(side * side, dtype=torch.float).reshape(1, side, side, 1)  # each patch's feature is its index
    out = m.model.pixel_shuffle(patch_ids, scale_factor=0.5).reshape(16, 4)
    for k in range(16):
        r, c = divmod(k, 4)
        assert sorted(out[k].tolist()) == sorted(float((2 * r + i) * side + 2 * c + j) for i in (0, 1) for j in (0, 1)), k


def test_processor_default_overrides_the_image_processors_crop_switch(tiny):
    "InternVLProcessor passes crop_to_patches=True itself: the image processor's own switch is ignored; max_patches is not."
    import copy
    _, p = tiny
    p = copy.deepcopy(p)
    wide = Image.new("RGB", (256, 64))
    p.image_processor.crop_to_patches = False
    assert encode(p, [wide])["pixel_values"].shape[0] == 5
    p.image_processor.max_patches = 1
    assert encode(p, [wide])["pixel_values"].shape[0] == 1
    p.image_processor.max_patches = 2
    collator = VLMCollator(p, model_type="internvl")
    assert image_token_cost(collator, (256, 64)) == 3 * 16 + 2  # two tiles, the thumbnail, <img> and </img>


def test_collator_masks_every_vision_token(tiny):
    m, p = tiny
    s = colour_shapes(1, seed=7)[0]
    s = {"messages": s["messages"], "images": [s["images"][0].resize((256, 64))]}
    b = VLMCollator(p, model_type="internvl")([s])
    vision = torch.isin(b["input_ids"], torch.tensor([p.image_token_id, p.start_image_token_id, p.end_image_token_id]))
    assert int(vision.sum()) == 82 and (b["labels"][vision] == -100).all()
    assert torch.isfinite(m(**b).loss)


def test_qwen3_language_model(tiny):
    "InternVL3.5 puts a Qwen3 decoder behind the same vision tower and projector: same module paths, same LoRA targets."
    import transformers as T
    from vlmnb.load import _TEXT, _text_config, tiny_tokenizer
    _, p = tiny
    tok = tiny_tokenizer("internvl")
    cfg = T.InternVLConfig(vision_config=tiny[0].config.vision_config.to_dict(),
                           text_config=T.Qwen3Config(**_text_config(tok, bos_token_id=None, head_dim=16)).to_dict(),
                           image_token_id=p.image_token_id, image_seq_length=16, downsample_ratio=0.5, tie_word_embeddings=False)
    torch.manual_seed(0)
    m3 = T.AutoModelForImageTextToText.from_config(cfg)
    assert type(m3.model.language_model).__name__ == "Qwen3Model"
    b = VLMCollator(p, model_type="internvl")([dict(colour_shapes(1, seed=2)[0])])
    assert torch.isfinite(m3(**b).loss)
    names = set(lora_targets(m3, LoraSpec(vision=True)))
    assert names == set(lora_targets(tiny[0], LoraSpec(vision=True)))
    assert "model.vision_tower.encoder.layer.1.attention.projection_layer" in names


def test_preset_has_the_real_geometry():
    "InternVL3-1B on the meta device: 0.94B parameters, 256 tokens a 448-px tile, up to 12 tiles and a thumbnail."
    m, p = preset_model("internvl3-1b", device="meta")
    assert round(sum(x.numel() for x in m.parameters()) / 1e6) == 938
    assert m.model.multi_modal_projector.linear_1.in_features == 4096 and m.lm_head.out_features == 151674
    for size, tiles in (((448, 448), 1), ((1344, 448), 4), ((4000, 3000), 13)):
        assert int((encode(p, [Image.new("RGB", size)])["input_ids"] == p.image_token_id).sum()) == 256 * tiles, size


def test_registry_entry():
    a = ARCHS["internvl"]
    assert a.processor_class == "InternVLProcessor" and a.image_token == "<IMG_CONTEXT>"
    assert set(a.vision_tokens) == {"<img>", "</img>", "<video>"}


@pytest.mark.parametrize("model_type,setting", [("internvl", "image_seq_length"), ("smolvlm", "image_seq_len"), ("qwen2_vl", None)])
def test_image_only_processor_reloads_its_settings(model_type, setting, tmp_path):
    "The image-only processor's __init__ names the family's parameters, so transformers saves and reloads them (and the template)."
    from vlmnb.load import load_processor
    _, p = tiny_model(model_type, tmp_path)
    q = load_processor(tmp_path)
    assert type(q) is type(p) and q.chat_template == p.chat_template and not hasattr(q, "video_processor")
    if setting: assert getattr(q, setting) == getattr(p, setting) == 16
