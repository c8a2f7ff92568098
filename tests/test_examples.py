"""Examples that never rot: every script in examples/ runs, and the notebook executes.

The walkthrough is committed executed, with its outputs; the tests re-execute it and check
both the fresh and the committed outputs. A cell tagged ``skip-execution`` (nbclient's own
tag) is shown, not run: the Parquet cell until the Parquet/key-columns merge, after which
the coordinator removes the tag and re-executes the notebook.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_there_are_examples():
    assert SCRIPTS and (EXAMPLES / "batch_walkthrough.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_script_runs(script: Path, tmp_path: Path):
    env = dict(os.environ, LOCALBATCH_HOME=str(tmp_path / "home"))
    # From another folder: a script must find its data next to itself, not in the cwd.
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    # The first thing a newcomer reads says where their data went, in words (not a dict).
    assert proc.stdout.splitlines()[0].startswith(f"store: {env['LOCALBATCH_HOME']}")


def _outputs_text(nb) -> str:
    """Every cell's outputs as text. A stream's consecutive outputs are joined as they
    are shown: the kernel may cut one print() into two outputs (its flush timer fired
    between the print's writes), which a separator between them would make two lines."""
    parts: list[str] = []
    for cell in nb.cells:
        stream = None
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                if out.get("name") == stream:
                    parts[-1] += str(out.get("text", ""))
                else:
                    parts.append(str(out.get("text", "")))
                stream = out.get("name")
                continue
            stream = None
            data = out.get("data", {})
            parts += [str(out.get("text", "")), str(data.get("text/plain", "")),
                      str(data.get("text/html", ""))]
    return "\n".join(parts)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import nbformat
    from nbclient import NotebookClient

    home = tmp_path / "home"
    monkeypatch.setenv("LOCALBATCH_HOME", str(home))  # the kernel inherits this environment
    nb = nbformat.read(notebook, as_version=4)
    # 'python3' is ipykernel's own kernel: jupyter_client finds it for the running
    # interpreter without a `python -m ipykernel install`.
    client = NotebookClient(nb, timeout=100, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    assert not list(EXAMPLES.glob("answer.csv"))  # nothing written beside the notebook
    if notebook.name == "batch_walkthrough.ipynb":
        _check_walkthrough(_outputs_text(nb))


def _check_walkthrough(text: str) -> None:
    assert "store: " in text  # the first output says where the store is
    assert "Batch execution succeeded" in text
    assert "state <b style='color:#080'>Complete</b>" in text  # the BatchResponse HTML view
    assert "['answer.csv']" in text
    assert "Complete - 3 rows failed" in text and "ValueError: wt 5.424" in text
    assert "Complete - 0 rows failed after retry_failed()" in text
    assert "Complete 32 rows from the CSV file" in text
    kept = re.search(r"Canceled - (\d+) of 320 rows recorded and kept", text)
    assert kept and 0 < int(kept.group(1)) < 320, "the cancel demo must keep some rows"
    assert "Complete - 320 of 320" in text  # resume(force=True) finished the rest
    assert "drop-in batch: Complete" in text and "HttpException 404" in text


def _walkthrough():
    import nbformat

    return nbformat.read(EXAMPLES / "batch_walkthrough.ipynb", as_version=4)


def test_walkthrough_is_committed_executed():
    nb = _walkthrough()
    code = [c for c in nb.cells if c.cell_type == "code"]
    skipped = [c for c in code if "skip-execution" in c.metadata.get("tags", [])]
    ran = [c for c in code if c not in skipped]
    assert [c.execution_count for c in ran] == list(range(1, len(ran) + 1))
    assert not any(o.output_type == "error" for c in ran for o in c.outputs)
    _check_walkthrough(_outputs_text(nb))
    # Only the Parquet cell waits for its merge; it still shows Parquet in and out.
    assert len(skipped) <= 1
    assert all("parquet" in c.source and 'keep=["car"]' in c.source for c in skipped)
