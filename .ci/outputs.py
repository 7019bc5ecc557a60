"""Re-run notebooks and store their outputs (they are the docs), with widget state; cells that carry a test flag
(`#| online`, `#| cuda`, `#| slow`) are skipped as nbdev-test skips them, keeping whatever output they had."""
import re, sys

import nbclient, nbformat

FLAG = re.compile(r"^#\|\s*(online|cuda|slow)\b", re.M)

for path in sys.argv[1:]:
    nb = nbformat.read(path, 4)
    skipped = {i: c.source for i, c in enumerate(nb.cells) if c.cell_type == "code" and FLAG.search(c.source)}
    for i in skipped: nb.cells[i].source = "# skipped: " + FLAG.search(skipped[i]).group(1)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": "nbs"}}).execute()
    for i, source in skipped.items(): nb.cells[i].source, nb.cells[i].outputs, nb.cells[i].execution_count = source, [], None
    nbformat.write(nb, path)
    print(f"{path}: executed" + (f", {len(skipped)} flagged cells skipped" if skipped else ""))
