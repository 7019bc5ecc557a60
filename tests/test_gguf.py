"""GGUF through llama.cpp's own converter and runtime: every family that llama.cpp takes round-trips (converted, then
run in llama-server against transformers on the same images); a vision part that the converter silently drops is
caught; unsupported families, unknown types and bad samples are refused with the reason; the CLI exports and proves a
trained run."""
import json, subprocess, sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from vlmnb.cli import main
from vlmnb.data import colour_shapes
from vlmnb.eval import generate_answers
from vlmnb.export import ExportError
import vlmnb.gguf as G
from vlmnb.load import TINY_ARCHS, load_model
from vlmnb.train import train


@pytest.fixture(scope="module")
def lc():
    return G.llama_cpp()  # built once per environment (minutes), then reused


@pytest.fixture(scope="module")
def samples():
    ds = colour_shapes(3, seed=5)
    return [ds[i] for i in range(3)]


def test_every_zoo_family_has_a_verdict():
    assert set(G.GGUF_FAMILIES) == set(TINY_ARCHS), set(TINY_ARCHS) ^ set(G.GGUF_FAMILIES)
    assert sum(r is None for r in G.GGUF_FAMILIES.values()) >= 7


def test_cli_quant_choices_are_the_gguf_types():
    from vlmnb.cli import parser
    export = parser()._subparsers._group_actions[0].choices["export"]
    assert set(next(a for a in export._actions if a.dest == "quant").choices) == set(G.GGUF_TYPES)


@pytest.mark.parametrize("model_type", [t for t, r in G.GGUF_FAMILIES.items() if r is None and t not in G._NEEDS_DOUBLE_NEWLINE])
def test_family_round_trip(model_type, lc, samples, tmp_path):
    folder = tmp_path / model_type
    G.gguf_tiny(model_type, folder)
    text, mmproj = G.convert_to_gguf(folder, tmp_path / "gguf", "f32", lc)
    info = G.gguf_info(mmproj, lc)
    assert info["architecture"] == "clip" and sum(t.startswith("v.") for t in info["tensors"]) > 5, info
    model, processor = load_model(folder)
    ours = generate_answers(model, processor, samples, 6)
    theirs = G.llama_cpp_answers(text, mmproj, samples, 6, lc)
    # A random model's answers are strings of arbitrary tokens, and they may stop at different places: vlmnb's one tiny
    # tokenizer holds every family's special tokens, some of which llama.cpp's vocabulary loader marks end-of-generation
    # by their text (a real checkpoint has only its own), and llama-server holds back an unfinished UTF-8 character at
    # the cut. Every token both produced must be the same.
    same = lambda a, b: (a := a.rstrip("\ufffd")) == (b := b.rstrip("\ufffd")) or (min(len(a), len(b)) >= 4 and (a.startswith(b) or b.startswith(a)))
    assert all(same(o, t) for o, t in zip(ours, theirs)), list(zip(ours, theirs))
    assert len(set(ours)) > 1  # the answers depend on the image


@pytest.mark.parametrize("model_type", G._NEEDS_DOUBLE_NEWLINE)
def test_idefics_families_trained_export(model_type, lc, tmp_path):
    """SmolVLM and Idefics3: llama.cpp shrinks the overview tile with its own resampling, so a random model's answers drift;
    a trained one must agree within q8_0's tolerance (8/8 measured)."""
    G.gguf_tiny(model_type, tmp_path / "base")
    run = short_run(tmp_path, tmp_path / "base", steps=100, learning_rate=3e-3, batch_size=16)
    check = G.export_gguf(run, tmp_path / "gguf", "q8_0", n_samples=8)
    assert check.ok and check.projector == "idefics3" and check.vision_tensors > 10, str(check)
    assert {a for a, _ in check.answers} <= {"red", "green", "blue", "yellow", "purple", "orange"}, check.answers  # trained answers


def test_a_dropped_vision_part_is_caught(lc, tmp_path, monkeypatch):
    "Weights under names the converter does not read (Qwen2-VL's vision tower as `model.visual.*`) give an mmproj without vision."
    folder = tmp_path / "renamed"
    G.gguf_tiny("qwen2_vl", folder)
    w = load_file(folder / "model.safetensors")
    save_file({("model." + k if k.startswith("visual.") else k): v for k, v in w.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    _, empty = G.convert_to_gguf(folder, tmp_path / "gguf", "f16", lc)  # the converter writes it without a word
    info = G.gguf_info(empty, lc)
    assert info["architecture"] == "clip" and not any(t.startswith("v.") for t in info["tensors"]), info["tensors"]
    # export_gguf refuses such a file before running it, whatever allow_mismatch says, and writes nothing
    G.gguf_tiny("qwen2_vl", tmp_path / "base")
    run = short_run(tmp_path, tmp_path / "base")
    real = G.convert_to_gguf
    monkeypatch.setattr(G, "convert_to_gguf", lambda folder, out, quant="q8_0", lc=None: (real(folder, out, quant, lc)[0], empty))
    with pytest.raises(ExportError, match="has no vision tensors"):
        G.export_gguf(run, tmp_path / "out", "f16", n_samples=2, allow_mismatch=True)
    assert not (tmp_path / "out").exists()


def test_refusals(tmp_path, samples):
    run = short_run(tmp_path, "tiny:llava", steps=1)
    with pytest.raises(ValueError, match=r"LLaVA \(llava\) cannot be exported to GGUF: .*Pixtral.*Families that can: Qwen2-VL"):
        G.export_gguf(run, tmp_path / "out", "q8_0")
    smol = short_run(tmp_path / "smol", "tiny:smolvlm", steps=1)  # the zoo's SmolVLM: no "\n\n" token for llama.cpp's layout
    with pytest.raises(ExportError, match=r'has no "\\n\\n" token.*gguf_tiny'):
        G.export_gguf(smol, tmp_path / "out", "q8_0")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="quant='q3'"):
        G.export_gguf(run, tmp_path / "out", "q3")
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--quant", "q8_0"]) == 2  # --quant without --gguf
    two_turns = {**samples[0], "messages": samples[0]["messages"] * 2, "images": samples[0]["images"] * 2}
    assert G._messages(two_turns, 0)[-1]["role"] == "user"  # conversations go to the server whole, up to the last answer
    missing = {**samples[0], "images": []}
    with pytest.raises(ValueError, match=r"sample 7: 1 image item\(s\) in its messages but 0"):
        G._messages(missing, 7)


def test_cli_exports_and_proves_a_trained_run(lc, tmp_path):
    base = tmp_path / "base"
    G.gguf_tiny("qwen2_vl", base)
    run = short_run(tmp_path, base, steps=30)
    out = subprocess.run([sys.executable, "-m", "vlmnb", "export", str(run), "--out", str(tmp_path / "gguf"), "--gguf", "--quant", "q4_k_m",
                          "--samples", "4"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    check = json.loads((tmp_path / "gguf" / "gguf_check.json").read_text())
    assert check["ok"] and check["same"] >= 2 and check["vision_tensors"] > 20, check  # q4_k_m's tolerance: half the answers
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == ["README.md", "gguf_check.json", "mmproj-run-f16.gguf", "run-q4_k_m.gguf"]
    assert "llama-server -m run-q4_k_m.gguf --mmproj mmproj-run-f16.gguf" in (tmp_path / "gguf" / "README.md").read_text()


def short_run(tmp_path: Path, base, steps: int = 4, learning_rate: float = 1e-2, batch_size: int = 8) -> Path:
    return train({"base_model": str(base), "datasets": [{"path": "synthetic:colour_shapes", "n": 32 if steps < 50 else 1000, "seed": 2}],
                  "max_steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "output_dir": str(tmp_path / "run"),
                  "progress_bar": False, "lora": {"r": 16, "alpha": 32, "projector": True}}).output_dir


@pytest.mark.online
def test_a_real_checkpoint_exports_and_answers_alike(tmp_path):
    "Qwen2-VL-2B-Instruct from the Hub: one LoRA step, then the GGUF export with its proof (about 8 GB of memory, minutes)."
    run = train({"base_model": "Qwen/Qwen2-VL-2B-Instruct", "datasets": [{"path": "synthetic:colour_shapes", "n": 8, "seed": 2}],
                 "max_steps": 1, "batch_size": 1, "lora": {"r": 4}, "output_dir": str(tmp_path / "run"), "progress_bar": False}).output_dir
    check = G.export_gguf(run, tmp_path / "gguf", "q8_0", n_samples=2)
    assert check.ok and check.vision_tensors > 100 and check.projector == "qwen2vl_merger", str(check)
