"""The families added to the zoo after the first ten, end to end: `vlmnb tiny` writes each, `train` fine-tunes it with
LoRA on a synthetic task (the loss falls), and the saved adapter reloads onto the saved base model."""
import pytest
import torch

from vlmnb.cli import main
from vlmnb.load import ARCHS, TINY_ARCHS, load_model
from vlmnb.lora import load_lora
from vlmnb.train import make_config, train

FIRST_TEN = ("llava", "llava_next", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "mllama", "paligemma")
NEW = [t for t in TINY_ARCHS if t not in FIRST_TEN]


def test_the_new_families_are_in_the_zoo():
    assert set(NEW) == {"idefics2", "aya_vision", "gemma4", "qwen3_5", "qwen3_5_moe", "internvl", "glm4v", "glm4v_moe",
                        "glm46v", "llava_onevision"}


@pytest.mark.parametrize("model_type", NEW)
def test_vlmnb_tiny_writes_a_folder_load_model_reads(model_type, tmp_path, capsys):
    assert main(["tiny", model_type, str(tmp_path)]) == 0
    assert ARCHS[model_type].name in capsys.readouterr().out
    model, processor = load_model(tmp_path)
    assert type(model).__name__ == ARCHS[model_type].model_class and processor.chat_template


@pytest.mark.parametrize("model_type", NEW)
def test_train_fine_tunes_each_new_family(model_type, tmp_path):
    cfg = make_config({"base_model": f"tiny:{model_type}", "datasets": [{"path": "synthetic:colour_shapes", "n": 32, "seed": 3}],
                       "max_steps": 8, "batch_size": 4, "learning_rate": 3e-3, "logging_steps": 1, "output_dir": str(tmp_path / "run"),
                       "progress_bar": False, "seed": 0})
    result = train(cfg)
    m = result.metrics
    assert m["steps"] == 8 and torch.isfinite(torch.tensor(m["final_loss"]))
    assert m["final_loss"] < m["train_loss"], f"{model_type}: the loss did not fall ({m['train_loss']:.3f} mean, {m['final_loss']:.3f} last)"
    base, _ = load_model(tmp_path / "run" / "base_model")
    tuned = load_lora(base, tmp_path / "run")
    assert any("lora_A" in n for n, _ in tuned.named_parameters())
