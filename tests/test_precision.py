"""The same adapter at several loading precisions: `vlmnb eval --precisions` on a run, 4-bit and 8-bit bases (bitsandbytes
on the CPU) for a second family and for a QLoRA run, and the bad inputs refused before anything loads."""
import json, subprocess, sys

import pytest

from vlmnb.cli import main
from vlmnb.precision import compare_precisions
from vlmnb.train import train


def short_run(tmp_path, model_type: str, **kw):
    return train({"base_model": f"tiny:{model_type}", "datasets": [{"path": "synthetic:colour_shapes", "n": 32, "seed": 2}],
                  "max_steps": 3, "batch_size": 8, "learning_rate": 1e-2, "output_dir": str(tmp_path / "run"),
                  "progress_bar": False, **kw}).output_dir


def test_cli_precisions_json_and_plot(tmp_path):
    run = short_run(tmp_path, "smolvlm")
    out = subprocess.run([sys.executable, "-m", "vlmnb", "eval", str(run), "--precisions", "fp32,bf16", "--samples", "4",
                          "--max-new-tokens", "4", "--json", "--plot", str(tmp_path / "p.png")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout[:out.stdout.rindex("}") + 1])
    assert [r["precision"] for r in report["table"]] == ["bf16", "fp32"] and report["reference"] == "fp32"
    assert report["table"][1]["same answers as fp32"] == 1.0 and all(r["n"] == 4 for r in report["runs"])
    assert all(r["peak_mib"] > 0 and r["weights_mib"] > 0 and r["seconds_per_sample"] > 0 for r in report["runs"])
    assert (tmp_path / "p.png").stat().st_size > 10_000


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_quantized_bases(tmp_path, quantization):
    "Qwen2-VL (a second family) trained in full precision and with QLoRA, evaluated on 4-bit, 8-bit and fp32 bases."
    run = short_run(tmp_path, "qwen2_vl", **({"quantization": quantization} if quantization else {}))
    report = compare_precisions(run, "fp32,8bit,4bit", n_samples=4, max_new_tokens=4)
    t = {r["precision"]: r for r in report.table()}
    assert list(t) == ["4bit", "8bit", "fp32"] and report.reference == "fp32"
    assert t["4bit"]["weights MiB"] < t["fp32"]["weights MiB"] and t["8bit"]["weights MiB"] < t["fp32"]["weights MiB"], t
    assert all(len(r["predictions"]) == 4 for r in report.rows)


def test_bad_inputs_exit_2(tmp_path, capsys):
    run = short_run(tmp_path, "smolvlm")
    assert main(["eval", str(run), "--precisions", "4bit,int3"]) == 2
    assert "['int3'] unknown" in capsys.readouterr().err
    assert main(["eval", str(run), "--precisions", "fp32", "--base"]) == 2
    assert "does not take --base" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--precisions", "fp32"]) == 2
    assert "is not a finished vlmnb run" in capsys.readouterr().err
