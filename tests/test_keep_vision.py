"""Batches without images under `keep_vision` (a blank image after the first row, masked and unlabelled, LLaMA-Factory's
way), on every zoo architecture whose processor takes text-only samples: the same loss as without it, the vision
tower and projector run (a gradient, zero, where there was none), and a batch with images is left as it was."""
import warnings

import pytest
import torch
from PIL import Image

from vlmnb.collate import VLMCollator
from vlmnb.load import ARCHS, TINY_ARCHS, component_of, tiny_model

warnings.filterwarnings("ignore")
TEXTS = [{"messages": [{"role": "user", "content": [{"type": "text", "text": q}]}, {"role": "assistant", "content": [{"type": "text", "text": a}]}]}
         for q, a in (("Say red.", "red"), ("Name a shape, any shape at all.", "a circle\n"))]


@pytest.mark.parametrize("model_type", [a for a in TINY_ARCHS if a != "paligemma"])
def test_a_blank_image_changes_no_loss_and_reaches_the_vision_side(model_type):
    model, processor = tiny_model(model_type)
    arch = ARCHS[model_type]
    plain, kept = VLMCollator(processor, arch=arch)(TEXTS), VLMCollator(processor, arch=arch, keep_vision=True)(TEXTS)
    n = plain["input_ids"].shape[1]
    assert torch.equal(kept["input_ids"][:, :n], plain["input_ids"]) and (kept["labels"][:, n:] == -100).all()
    model.train()
    for p in model.parameters(): p.requires_grad_(True)
    vision = [(name, p) for name, p in model.named_parameters() if component_of(name, arch) in ("projector", "vision tower")]
    assert vision
    with_image = VLMCollator(processor, arch=arch)([{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                                                               TEXTS[0]["messages"][1]], "images": [Image.new("RGB", (64, 64))]}])
    got = []
    for batch in (plain, kept, with_image):
        model.zero_grad()
        torch.manual_seed(0)
        loss = model(**batch).loss
        loss.backward()
        got.append((loss.item(), sum(p.grad is not None for _, p in vision)))
    assert got[0][0] == pytest.approx(got[1][0], abs=1e-5), "the blank image changes no loss"
    assert got[1][1] == got[2][1] > got[0][1], "the vision-side parameters that an image batch trains have a gradient with the blank image"


def test_a_batch_with_images_is_left_as_it_is():
    _, processor = tiny_model("qwen2_vl")
    s = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "a"}]}], "images": [Image.new("RGB", (40, 40))]}
    a = VLMCollator(processor, model_type="qwen2_vl")([s, TEXTS[0]])
    b = VLMCollator(processor, model_type="qwen2_vl", keep_vision=True)([s, TEXTS[0]])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_packing_and_paligemma_are_refused_by_name():
    _, processor = tiny_model("paligemma")
    with pytest.raises(ValueError, match="PaliGemma takes no image-free sample"): VLMCollator(processor, model_type="paligemma", keep_vision=True)
