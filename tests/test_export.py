"""Export for every zoo architecture: a short run, then the merged model proven against the adapter, reloaded in a
fresh process both ways, with a complete file set; QLoRA runs merge into a full-precision base; Mllama's gates survive;
the model card's code runs as written, in a fresh process elsewhere."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from vlmnb.export import ExportError, RunFolder, check_files, export
from vlmnb.load import TINY_ARCHS, load_model
from vlmnb.train import train


def short_run(folder: Path, model_type: str, **kw) -> Path:
    cfg = {"base_model": f"tiny:{model_type}", "datasets": [{"path": "synthetic:colour_shapes", "n": 32, "seed": 2}],
           "max_steps": 4, "batch_size": 8, "learning_rate": 1e-2, "output_dir": str(folder / "run"), "progress_bar": False,
           "lora": {"projector": True}, **kw}
    return train(cfg).output_dir


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_merge_parity_reload(model_type, tmp_path):
    run = short_run(tmp_path, model_type, **({"lora": {"cross_attention": True, "projector": True}} if model_type == "mllama" else {}))
    report = export(run, tmp_path / "merged", merge_adapter=True, n_samples=4)
    assert report.ok, str(report)
    assert report.parity.max_logit_diff < 1e-3 and report.parity.same_answers == 4
    assert report.reload["auto_same"] and report.reload["vlmnb_same"]
    assert check_files(tmp_path / "merged", merged=True) == []
    merged, _ = load_model(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    if model_type == "mllama":  # the trained gates are in the merged weights
        gates = [p.item() for n, p in merged.named_parameters() if n.endswith("cross_attn_attn_gate")]
        assert gates and all(g != 0 for g in gates)
    adapter = export(run, tmp_path / "adapter")
    assert adapter.ok and check_files(tmp_path / "adapter", merged=False) == []


def test_qlora_merges_into_full_precision(tmp_path):
    run = short_run(tmp_path, "smolvlm", quantization="4bit")
    assert RunFolder.read(run).config["quantization"] == "4bit"
    report = export(run, tmp_path / "merged", merge_adapter=True, n_samples=4)
    assert report.ok, str(report)
    merged, _ = load_model(tmp_path / "merged")
    kinds = {type(m).__name__ for m in merged.modules() if isinstance(m, torch.nn.Linear)}
    assert kinds == {"Linear"}, kinds
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "QLoRA" in card and "Merge parity" in card


def test_mismatch_is_an_error_and_saves_nothing(tmp_path, monkeypatch):
    run = short_run(tmp_path, "llava")
    import vlmnb.export as ex
    monkeypatch.setitem(ex.TOLERANCE, "bfloat16", 1e-9)  # no bf16 merge is that close
    with pytest.raises(ExportError, match="merged model differs from the adapter model"):
        export(run, tmp_path / "bf16", merge_adapter=True, dtype="bfloat16", n_samples=2)
    assert not (tmp_path / "bf16").exists()
    report = export(run, tmp_path / "bf16", merge_adapter=True, dtype="bfloat16", n_samples=2, allow_mismatch=True, check_reload=False)
    assert not report.ok and json.loads((tmp_path / "bf16" / "parity.json").read_text())["samples"] == 2


def python_block(card: str) -> str:
    "The code of a model card's first python block."
    assert "```python\n" in card, card
    return card.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("model_type", ["smolvlm", "mllama"])
def test_model_card_code_runs_in_a_fresh_process(model_type, tmp_path):
    "The card of the run, of its adapter export and of its merged export each load the model and answer, offline, from elsewhere."
    run = short_run(tmp_path, model_type, **({"lora": {"cross_attention": True, "projector": True}} if model_type == "mllama" else {}))
    export(run, tmp_path / "adapter")
    export(run, tmp_path / "merged", merge_adapter=True, n_samples=2, check_reload=False)
    elsewhere = tmp_path / "elsewhere"; elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for folder in (run, tmp_path / "adapter", tmp_path / "merged"):
        code = python_block((folder / "README.md").read_text())
        assert "tiny:" not in code and f'"{folder.resolve()}"' in code
        if folder.name != "merged": assert f'from_pretrained("{(run / "base_model").resolve()}")' in code  # the base it trained on
        assert ("load_file(" in code) == (model_type == "mllama" and folder.name != "merged")  # Mllama's gates
        out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{folder.name}'s card: {out.stderr[-3000:]}"
        assert out.stdout.strip(), f"{folder.name}'s card printed no answer: {out.stdout!r}"
