"""A newcomer's first minutes: `vlmnb --help` starts without torch, the public names do not shadow their modules,
errors tell a user's mistake (one line, exit 2) from a bug (a traceback, exit 1), hints name the key a user can set,
the data is checked before any model loads, and `progress_bar: false` prints no progress bar."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
from PIL import Image

import vlmnb.cli as cli
from vlmnb.cli import main, own_error

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}


def test_help_starts_without_torch():
    run = subprocess.run([sys.executable, "-c", "import sys, vlmnb, vlmnb.cli\n"
                          "sys.argv = ['vlmnb', '--help']\n"
                          "try: vlmnb.cli.main()\n"
                          "except SystemExit: pass\n"
                          "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"],
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "usage: vlmnb" in run.stdout and run.stdout.strip().endswith("[]"), run.stdout + run.stderr


def test_public_names_do_not_shadow_modules():
    import importlib, types
    t = importlib.import_module("vlmnb.train")
    from vlmnb import train, load_model, tiny_model
    assert isinstance(t, types.ModuleType) and train is t and callable(train) and t.make_config
    assert load_model.__module__ == "vlmnb.load" and tiny_model.__module__ == "vlmnb.load"


def test_own_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmnb: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_bug_prints_its_traceback_and_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_tiny", lambda args: {}["no such key"])
    assert main(["tiny", "smolvlm", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "unexpected error" in err


@pytest.mark.parametrize("argv", [["--debug", "validate"], ["validate", "--debug"]])
def test_debug_shows_every_traceback(tmp_path, capsys, argv):
    assert main([*argv, str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "vlmnb: error: " in err


def test_own_error_tells_raise_statements_from_bugs():
    from vlmnb.data import parse_split
    with pytest.raises(ValueError) as own: parse_split("train[")       # vlmnb's own message
    with pytest.raises(AttributeError) as bug: parse_split(None)       # a bug: None has no .replace
    try: {}["x"]
    except KeyError as e: foreign = e
    assert own_error(own.value) and not own_error(bug.value) and not own_error(foreign)


def _data_with_missing_image(folder: Path) -> Path:
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 20, 20)).save(folder / "img" / "0.png")
    rows = [{"image": f"img/{i}.png", "question": "Colour?", "answer": "red"} for i in range(2)]  # img/1.png is missing
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "data.jsonl"


def test_hints_name_the_key_the_user_can_set(tmp_path):
    import yaml
    data = _data_with_missing_image(tmp_path)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"base_model": "tiny:smolvlm", "datasets": [{"path": str(data)}],
                                                       "output_dir": str(tmp_path / "run")}))
    run = subprocess.run([sys.executable, "-m", "vlmnb", "validate", str(tmp_path / "cfg.yaml")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "sample 1 [missing_file]" in run.stderr, run.stderr[-2000:]
    assert "on_bad_data: skip" in run.stderr and "--set on_bad_data=skip" in run.stderr and "on_error" not in run.stderr
    from vlmnb.data import DataError, prepare
    with pytest.raises(DataError, match="pass on_error='skip'"): prepare(str(data))  # the function's own argument


def test_the_data_is_checked_before_any_model_loads(tmp_path, monkeypatch):
    import vlmnb.train as t
    def no_model(*a, **k): raise AssertionError("a model was loaded before the data was checked")
    monkeypatch.setattr(t, "load_model", no_model)
    monkeypatch.setattr(t, "load_processor", no_model)
    monkeypatch.setattr(t, "base_model_path", no_model)
    cfg = {"base_model": "tiny:smolvlm", "output_dir": str(tmp_path / "run")}
    with pytest.raises(FileNotFoundError, match="nothing.jsonl does not exist"):
        t.train({**cfg, "datasets": [{"path": str(tmp_path / "nothing.jsonl")}]})
    with pytest.raises(t.DataError, match="sample 1 \\[missing_file\\]"):
        t.preflight(t.make_config({**cfg, "datasets": [{"path": str(_data_with_missing_image(tmp_path / "d"))}]}))


def test_progress_bar_false_prints_no_progress_bars(tmp_path):
    code = ("from vlmnb import train\nfrom vlmnb.train import demo_config\n"
            f"train(demo_config({str(tmp_path / 'demo')!r}, progress_bar=False, max_steps=3, eval_samples=2))")
    run = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "%|" not in run.stderr + run.stdout, (run.stderr + run.stdout)[-2000:]
