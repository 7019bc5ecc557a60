"""Generation metrics during training, logged beside the loss; metric edge cases."""
import json

import pytest

from vlmnb.eval import anls, cer, vqa_accuracy, wer
from vlmnb.train import train


def test_generation_metrics_logged_during_training(tmp_path):
    result = train({"base_model": "tiny:smolvlm", "datasets": [{"path": "synthetic:colour_shapes", "n": 800, "seed": 1}],
                    "val_set_size": 40, "eval_steps": 60, "eval_samples": 40, "max_steps": 180, "batch_size": 16,
                    "learning_rate": 3e-3, "lora": {"alpha": 32, "projector": True}, "max_new_tokens": 4,
                    "output_dir": str(tmp_path / "run"), "progress_bar": False, "seed": 0})
    log = json.loads((tmp_path / "run" / "metrics.json").read_text())["generation_eval"]
    assert [e["step"] for e in log] == [60, 120, 180]
    assert log[-1]["eval_exact_match"] > log[0]["eval_exact_match"] or log[0]["eval_exact_match"] >= 0.9
    assert result.metrics["after"]["accuracy"] == log[-1]["eval_exact_match"]
    assert any("eval_loss" in h for h in result.history)


def test_metric_edge_cases():
    assert vqa_accuracy("", ["", "", ""]) == pytest.approx(2 / 3)  # leave one out: two of the others agree
    assert anls("", ["abc"]) == 0.0 and anls("abc", [""]) == 0.0
    assert cer("", "") == 0.0 and cer("x", "") == 1.0
    assert wer("", "") == 0.0 and wer("a b", "a b") == 0.0
