"""The README's Python quick start runs as written."""
import os, re, subprocess, sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_quick_start_runs(tmp_path):
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    assert code, "the quick start has a python block"
    script = tmp_path / "quickstart.py"
    script.write_text("\n".join(code))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "missing_file" in run.stdout
    before, after = map(float, run.stdout.strip().splitlines()[-1].split(" -> "))
    assert before <= 1 / 6 and after >= 0.95


def test_readme_and_landing_page_list_every_notebook_and_command():
    import json
    from vlmnb.cli import parser
    text = README.read_text()
    index = "".join("".join(c["source"]) for c in json.loads((README.parent / "nbs" / "index.ipynb").read_text())["cells"])
    for nb in sorted((README.parent / "nbs").glob("[0-9]*.ipynb")):
        assert f"| `{nb.stem}` |" in text, f"README's notebook table lacks {nb.stem}"
        assert f"| `{nb.stem}` |" in index, f"index.ipynb's notebook table lacks {nb.stem}"
    sub = next(a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        inner = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        for cmd in ([f"{name} {n}" for n in inner[0].choices] if inner else [name]):
            assert f"`vlmnb {cmd}" in text, f"README's command table lacks `vlmnb {cmd}`"


def test_readme_lists_every_family_with_its_status():
    from vlmnb.load import family_status
    text = README.read_text().split("## Model families", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([a-z0-9_]+)` \|[^|]*\|[^|]*\|([^|]*)\|$", text, re.M)}
    assert rows == {r["model_type"]: r["status"] for r in family_status()}, "README's family table differs from family_status()"
