"""The docs build up to rendering: every notebook processes into _proc/ cleanly (no warnings), and the sidebar lists
every notebook in learning order."""
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]


def test_notebooks_process_for_the_docs():
    run = subprocess.run(["make", "--no-print-directory", "docs-proc"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Warning" not in run.stderr and "Found cells containing imports" not in run.stderr, run.stderr[-3000:]
    notebooks = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    assert sorted(p.name for p in (ROOT / "_proc").glob("*.ipynb")) == notebooks


def test_sidebar_lists_every_notebook_in_order():
    side = yaml.safe_load((ROOT / "nbs" / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    listed = [c for c in side if isinstance(c, str)] + [n for c in side if isinstance(c, dict) for n in c["contents"]]
    assert sorted(listed) == sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    numbered = [n for n in listed if n[0].isdigit()]
    assert numbered == sorted(numbered) and listed[:2] == ["index.ipynb", "tutorial.ipynb"]
