"""Every library internal vlmnb.compat reaches is still where it expects it, checked on the real objects; where cheap,
the behaviour vlmnb depends on too. A failure names the internal and the version it was checked against."""
import inspect, io, warnings

import pytest
import torch
from PIL import Image

from vlmnb.compat import (BNB_PACKED_FLAG, BNB_REPACK_FLAG, CHECKED, REPLACEMENT_OFFSETS, CompatError, CompatWarning,
                          attn_implementation, cpu_has_bf16, disable_cpu_repack, is_cpu_packed, linear_4bit_layers,
                          mllama_cross_attention_layers, moved, processor_parts, save_trainer_checkpoint,
                          text_replacement_offsets, unpack_cpu_4bit)


def test_compat_imports_no_other_vlmnb_module():
    import vlmnb.compat
    source = inspect.getsource(vlmnb.compat)
    assert "from ." not in source and "from vlmnb" not in source and "import vlmnb" not in source


def test_moved_names_internal_and_versions():
    msg = moved("torch", "torch.cpu._x", "it costs this")
    assert msg.startswith("torch.cpu._x is not where vlmnb expects it in torch ")
    assert f"checked against torch {CHECKED['torch']}" in msg and f"torch=={CHECKED['torch']}" in msg and "it costs this" in msg


# torch

@pytest.mark.parametrize("name", ["_is_avx512_bf16_supported", "_is_amx_tile_supported"])
def test_torch_cpu_bf16_probes_exist(name):
    assert callable(getattr(torch.cpu, name, None)), moved("torch", f"torch.cpu.{name}", "cpu_has_bf16 answers False")
    assert isinstance(getattr(torch.cpu, name)(), bool)


def test_cpu_has_bf16_is_a_bool_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompatWarning)
        assert isinstance(cpu_has_bf16(), bool)


def test_cpu_has_bf16_warns_and_says_false_when_the_probe_moves(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    with pytest.warns(CompatWarning, match="torch.cpu._is_avx512_bf16_supported"):
        assert cpu_has_bf16() is False


# bitsandbytes

@pytest.fixture
def bnb():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F
    from bitsandbytes.nn import Linear4bit
    return F, Linear4bit


def _layer(Linear4bit, seed=0):
    torch.manual_seed(seed)
    return Linear4bit(64, 64, compute_dtype=torch.float32).to("cpu")  # quantized on the move


def test_bnb_internals_exist(bnb):
    F, Linear4bit = bnb
    assert hasattr(_layer(Linear4bit), BNB_REPACK_FLAG), moved("bitsandbytes", f"Linear4bit.{BNB_REPACK_FLAG}", "repacking cannot be turned off")
    for name in ("_convert_weight_packed_for_cpu", "_convert_weight_packed_for_cpu_inverse"):
        assert callable(getattr(F, name, None)), moved("bitsandbytes", f"bitsandbytes.functional.{name}", "see vlmnb.compat")
    params = list(inspect.signature(F._convert_weight_packed_for_cpu_inverse).parameters)
    assert params[:2] == ["packed_weight", "quant_state"], moved("bitsandbytes", "_convert_weight_packed_for_cpu_inverse(packed_weight, quant_state)", f"its parameters are now {params}")


def test_bnb_pack_unpack_round_trip(bnb):
    "bitsandbytes' own packer sets the flag compat reads (a rename fails here), and compat's unpack restores the codes."
    F, Linear4bit = bnb
    layer = _layer(Linear4bit)
    x, codes = torch.randn(2, 64), layer.weight.data.clone()
    before = layer(x)  # training mode: never repacked
    w = layer.weight
    w.data, w.quant_state = F._convert_weight_packed_for_cpu(w.data, w.quant_state)
    assert getattr(w.quant_state, BNB_PACKED_FLAG, None) is True, moved("bitsandbytes", f"QuantState.{BNB_PACKED_FLAG}", "a repacked weight looks unpacked")
    assert is_cpu_packed(w) and not torch.equal(w.data.reshape(-1), codes.reshape(-1))
    assert unpack_cpu_4bit(w) and not is_cpu_packed(w) and not unpack_cpu_4bit(w)
    assert torch.equal(w.data, codes)
    torch.testing.assert_close(layer(x), before, atol=1e-2, rtol=0)  # the scales spent the packed time in bf16


def test_bnb_forward_repacks_unless_disabled(bnb):
    "On a CPU where bitsandbytes repacks, an eval forward does repack, and disable_cpu_repack stops it."
    F, Linear4bit = bnb
    if not F.has_avx512bf16(): pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    x = torch.randn(2, 64)
    trapped, kept = _layer(Linear4bit).eval(), _layer(Linear4bit).eval()
    disable_cpu_repack(kept)
    with torch.no_grad(): trapped(x), kept(x)
    assert is_cpu_packed(trapped.weight), "bitsandbytes no longer repacks on an eval forward: the trap vlmnb.compat guards against may be gone"
    assert not is_cpu_packed(kept.weight) and getattr(kept, BNB_REPACK_FLAG) is False


def test_linear_4bit_layers_finds_the_quantized_ones(bnb):
    _, Linear4bit = bnb
    layer = _layer(Linear4bit)
    assert linear_4bit_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), layer)) == [layer]


def test_disable_warns_when_the_flag_moved():
    with pytest.warns(CompatWarning, match=f"Linear4bit.{BNB_REPACK_FLAG}"):
        disable_cpu_repack(torch.nn.Linear(2, 2))


def test_unpack_raises_when_the_inverse_moved(bnb, monkeypatch):
    F, Linear4bit = bnb
    w = _layer(Linear4bit).weight
    w.data, w.quant_state = F._convert_weight_packed_for_cpu(w.data, w.quant_state)
    monkeypatch.delattr(F, "_convert_weight_packed_for_cpu_inverse")
    with pytest.raises(CompatError, match="_convert_weight_packed_for_cpu_inverse is not where vlmnb expects it"):
        unpack_cpu_4bit(w)


# transformers

def test_processor_parts_come_from_init_signature():
    from transformers.processing_utils import ProcessorMixin
    from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor
    from vlmnb.load import IMAGE_ONLY_PROCESSORS
    assert callable(getattr(ProcessorMixin, "get_attributes", None)), moved("transformers", "ProcessorMixin.get_attributes", "see vlmnb.compat")
    assert processor_parts(SmolVLMProcessor) == ["image_processor", "tokenizer", "video_processor"]
    for cls in IMAGE_ONLY_PROCESSORS.values():
        want = [p for p in processor_parts(cls.__mro__[1]) if p != "video_processor"]  # the family's parts less video
        assert "video_processor" in processor_parts(cls.__mro__[1]) and processor_parts(cls) == want, moved("transformers", "ProcessorMixin.get_attributes reading __init__", f"{cls.__name__} has parts {processor_parts(cls)}")


def test_processor_parts_raises_when_get_attributes_moved():
    with pytest.raises(CompatError, match="ProcessorMixin.get_attributes"):
        processor_parts(object)


def test_text_replacement_offsets_is_a_processing_keyword():
    from typing import get_type_hints
    from transformers.processing_utils import ProcessingKwargs
    assert "return_text_replacement_offsets" in get_type_hints(ProcessingKwargs), moved("transformers", "ProcessingKwargs.return_text_replacement_offsets", "the collator cannot find answers in expanded text")


@pytest.mark.parametrize("model_type", ["qwen2_vl", "smolvlm", "llava"])
def test_processors_report_where_they_expanded(model_type):
    from vlmnb.collate import render
    from vlmnb.load import tiny_model
    _, processor = tiny_model(model_type)
    texts = [render(processor, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}])]
    out = processor(text=texts, images=[[Image.new("RGB", (32, 32))]], return_offsets_mapping=True, return_tensors="pt", **REPLACEMENT_OFFSETS)
    assert "text_replacement_offsets" in out, moved("transformers", "return_text_replacement_offsets", f"{type(processor).__name__} reports nothing")
    offsets = out.pop("offset_mapping")
    pairs = text_replacement_offsets(out, texts, offsets)
    assert pairs[0] and all(new[1] - new[0] > old[1] - old[0] for old, new in pairs[0])  # every placeholder grew
    assert int(offsets[0][:, 1].max()) == len(texts[0]) + sum((n[1] - n[0]) - (o[1] - o[0]) for o, n in pairs[0])


def test_unreported_expansion_is_refused():
    out = {"text_replacement_offsets": None}
    with pytest.raises(CompatError, match="text 0 was expanded to at least 40 characters"):
        text_replacement_offsets(out, ["<image>What?"], torch.tensor([[[0, 30], [30, 40]]]))
    with pytest.raises(CompatError, match="span/new_span"):
        text_replacement_offsets({"text_replacement_offsets": [[{"start": 0}]]}, ["x"])


def test_mllama_returns_cross_attention_in_attentions():
    from vlmnb.data import colour_shapes
    from vlmnb.load import tiny_model
    model, processor = tiny_model("mllama")
    assert hasattr(model.config.text_config, "cross_attention_layers"), moved("transformers", "MllamaTextConfig.cross_attention_layers", "see vlmnb.compat")
    sample = colour_shapes(1, seed=3)[0]
    batch = processor(text=[processor.apply_chat_template(sample["messages"], tokenize=False)], images=[sample["images"]], return_tensors="pt")
    model.set_attn_implementation("eager")
    with torch.no_grad(): attentions = model(**batch, output_attentions=True).attentions
    assert mllama_cross_attention_layers(attentions, model.config) == [1]
    assert attentions[1].shape[-1] != attentions[1].shape[-2] and attentions[0].shape[-1] == attentions[0].shape[-2]
    with pytest.raises(CompatError, match="Mllama's cross-attention weights"):
        mllama_cross_attention_layers((attentions[0], None), model.config)


def test_attn_implementation_is_read_from_the_config():
    from transformers import PreTrainedConfig
    from vlmnb.load import tiny_model
    assert hasattr(PreTrainedConfig(), "_attn_implementation"), moved("transformers", "PreTrainedConfig._attn_implementation", "see vlmnb.compat")
    model, _ = tiny_model("llava")
    model.set_attn_implementation("eager")
    assert attn_implementation(model) == "eager"
    with pytest.raises(CompatError, match="_attn_implementation"):
        attn_implementation(torch.nn.Linear(1, 1))


def test_save_trainer_checkpoint_writes_a_complete_checkpoint(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    params = list(inspect.signature(Trainer._save_checkpoint).parameters)
    assert params == ["self", "model", "trial"], moved("transformers", "Trainer._save_checkpoint(model, trial)", f"its parameters are now {params}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, vocab_size=32))
    rows = [{"input_ids": torch.arange(8), "labels": torch.arange(8)} for _ in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    folder = save_trainer_checkpoint(trainer)
    assert folder == tmp_path / "checkpoint-1"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {p.name for p in folder.iterdir()}


def test_save_trainer_checkpoint_raises_when_it_moved():
    with pytest.raises(CompatError, match="Trainer._save_checkpoint"):
        save_trainer_checkpoint(object())

