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
