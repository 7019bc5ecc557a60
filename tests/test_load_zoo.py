"""Every tiny-zoo architecture: build, save, reload in a fresh process (plain transformers after `import vlmnb`,
and vlmnb's loader), same logits, one chat-templated image+text sample, finite loss and a backward pass;
8-bit and 4-bit loads on CPU with the vision tower, projector and head left unquantized."""
import json, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from vlmnb.load import ARCHS, TINY_ARCHS, LoadError, linear_kinds, load_model, tiny_model

SAMPLE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
          {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]


def batch_for(processor, image):
    text = processor.apply_chat_template(SAMPLE, tokenize=False)
    batch = processor(text=[text], images=[[image]], return_tensors="pt")
    batch.pop("labels", None)
    return batch


@pytest.fixture(scope="module")
def image():
    img = Image.new("RGB", (64, 48), (240, 240, 240))
    img.paste((220, 40, 40), (10, 10, 40, 40))
    return img


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Each architecture saved once per module: {model_type: folder}."""
    root = tmp_path_factory.mktemp("zoo")
    return {t: (tiny_model(t, root / t), root / t)[1] for t in TINY_ARCHS}


FRESH = textwrap.dedent('''
    import json, sys, torch
    from PIL import Image
    import vlmnb  # registers vlmnb's image-only processors with AutoProcessor
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vlmnb.load import ARCHS, load_model
    folder, model_type, out = sys.argv[1], sys.argv[2], sys.argv[3]
    image = Image.open(sys.argv[4]).convert("RGB")
    messages = json.loads(sys.argv[5])
    results = {}
    for how in ("auto", "vlmnb"):
        if how == "auto": model, processor = AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
        else: model, processor = load_model(folder)
        text = processor.apply_chat_template(messages, tokenize=False)
        batch = processor(text=[text], images=[[image]], return_tensors="pt"); batch.pop("labels", None)
        model.eval()
        with torch.no_grad(): logits = model(**batch).logits
        image_id = processor.tokenizer.convert_tokens_to_ids(ARCHS[model_type].image_token)
        labels = batch["input_ids"].masked_fill(batch["input_ids"] == image_id, -100)
        model.train()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        grads = [p.grad is not None and torch.isfinite(p.grad).all().item() for p in model.get_submodule(ARCHS[model_type].language_model).parameters()]
        results[how] = {"processor": type(processor).__name__, "loss": loss.item(), "grads": all(grads)}
        torch.save(logits, f"{out}.{how}.pt")
    print(json.dumps(results))
''')


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_round_trip_in_fresh_process(model_type, zoo, image, tmp_path):
    folder = zoo[model_type]
    for f in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (folder / f).exists(), f"{model_type}: {f} missing from {sorted(p.name for p in folder.iterdir())}"
    model, processor = tiny_model(model_type)  # same seed: the same weights as the saved folder
    with torch.no_grad(): expected = model.eval()(**batch_for(processor, image)).logits
    image_file = tmp_path / "image.png"; image.save(image_file)
    script = tmp_path / "fresh.py"; script.write_text(FRESH)
    run = subprocess.run([sys.executable, str(script), str(folder), model_type, str(tmp_path / "logits"), str(image_file),
                          json.dumps(SAMPLE)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for how in ("auto", "vlmnb"):
        r = results[how]
        assert r["processor"] == type(processor).__name__, r  # AutoProcessor must not fall back to the bare tokenizer
        assert torch.isfinite(torch.tensor(r["loss"])) and r["grads"], r
        torch.testing.assert_close(torch.load(tmp_path / f"logits.{how}.pt"), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantization,kind", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_quantized_load_keeps_vision_full_precision(model_type, quantization, kind, zoo, image):
    model, processor = load_model(zoo[model_type], quantization=quantization)
    kinds = linear_kinds(model, ARCHS[model_type])
    assert set(kinds["vision"]) == {"Linear"}, kinds
    assert set(kinds["projector"]) <= {"Linear"} and set(kinds["lm_head"]) == {"Linear"}, kinds
    assert kind in kinds["language"] and "Linear" not in kinds["language"], kinds
    vision_weights = [p for p in model.get_submodule(ARCHS[model_type].vision_tower).parameters()]
    assert all(p.dtype == torch.float32 for p in vision_weights)
    model.eval()
    with torch.no_grad(): logits = model(**batch_for(processor, image)).logits  # eval forward works on CPU
    assert torch.isfinite(logits).all()


def test_quantized_training_step(zoo, image):
    """QLoRA's base: a 4-bit model takes a training forward and backward into a full-precision projector."""
    model, processor = load_model(zoo["smolvlm"], quantization="4bit")
    for p in model.parameters(): p.requires_grad_(False)
    projector = model.get_submodule(ARCHS["smolvlm"].projector)
    for p in projector.parameters(): p.requires_grad_(True)
    batch = batch_for(processor, image)
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in projector.parameters())


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(LoadError, match="no such folder"): load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="has no config.json"): load_model(tmp_path / "empty")
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=64)).save_pretrained(tmp_path / "llama")
    with pytest.raises(LoadError, match="model_type 'llama' is a text-only language model.*smolvlm"): load_model(tmp_path / "llama")


def test_pickle_weights_are_refused(tmp_path):
    from safetensors.torch import load_file
    tiny_model("llava", tmp_path / "bin")
    torch.save(load_file(tmp_path / "bin" / "model.safetensors"), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    with pytest.raises(LoadError, match="safetensors only"): load_model(tmp_path / "bin")


def test_folder_without_processor(tmp_path):
    model, _ = tiny_model("llava")
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(LoadError, match="no processor"): load_model(tmp_path / "bare")


def test_tiny_cli(tmp_path):
    exe = Path(sys.executable).parent / "vlmnb"
    run = subprocess.run([str(exe), "tiny", "gemma3", str(tmp_path / "g")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Gemma 3" in run.stdout
    model, processor = load_model(tmp_path / "g")
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"


VIDEO_SLOT = [t for t in TINY_ARCHS if ARCHS[t].processor_class and "video_processor" in getattr(transformers, ARCHS[t].processor_class).get_attributes()]


@pytest.mark.parametrize("model_type", VIDEO_SLOT)
def test_a_real_checkpoint_layout_loads_without_torchvision(model_type, zoo, image, tmp_path):
    "A folder laid out as the Hub checkpoint is (its processor_config.json names the family's own class and carries a video "
    "processor section) loads through load_model with the family's class less its video slot, and encodes an image sample."
    import shutil
    from vlmnb.load import has_torchvision
    if has_torchvision(): pytest.skip("with torchvision the family's own processor loads")
    folder = tmp_path / model_type
    shutil.copytree(zoo[model_type], folder)
    cfg = json.loads((folder / "processor_config.json").read_text())
    family = ARCHS[model_type].processor_class
    cfg.update(processor_class=family, video_processor={"video_processor_type": family.replace("Processor", "VideoProcessor")})
    (folder / "processor_config.json").write_text(json.dumps(cfg))
    model, processor = load_model(folder)
    assert type(processor).__name__ == family.removesuffix("Processor") + "ImageOnlyProcessor"
    assert type(processor).__mro__[1].__name__ == family and processor.chat_template
    batch = batch_for(processor, image)
    assert (batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids(ARCHS[model_type].image_token)).sum() > 0
