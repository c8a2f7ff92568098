"""Regenerate the command-line transcript in docs/cli.md by running it for real.

    python docs/transcript.py            # rewrites the block between the markers

Every command below runs in a scratch copy of ``examples/`` on a fresh store
(``LOCALBATCH_HOME`` in that folder), in a pseudo-terminal 100 columns wide (so the
progress bar shows, as a user sees it), and what it printed replaces the block
between ``<!-- transcript:start -->`` and ``<!-- transcript:end -->`` in
``docs/cli.md``. ``{RUN1}``-style names stand for the execution ids printed by
earlier ``run`` commands; a trailing ``# ...`` comment is shown but not run. Only
the last state of a progress bar (what stays on the screen) is kept.

Nothing here is imported by the tests: they check the transcript's commands
against the parser (tests/test_docs.py); this script keeps its output true.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_PAGE = ROOT / "docs" / "cli.md"
START, END = "<!-- transcript:start -->", "<!-- transcript:end -->"

MAKE_PARQUET = ('python -c "import pandas as pd; '
                "pd.read_csv('examples/data/mtcars.csv').to_parquet('mtcars.parquet')\"")
SHOW_PARQUET = ('python -c "import pandas as pd; '
                "print(pd.read_parquet('scores.parquet').head(3))\"")
SHOW_KEYED = ('python -c "import pandas as pd; '
              "print(pd.read_parquet('keyed.parquet').head(3))\"")
MAKE_BIG = ('python -c "import pandas as pd; pd.concat([pd.read_csv('
            "'examples/data/mtcars.csv')] * 100).to_csv('mtcars_x100.csv', index=False)\"")

#: (command, name to give the execution id it prints, or None)
COMMANDS: list[tuple[str, str | None]] = [
    ("python examples/quickstart.py | sed -n 1,4p", None),
    ("python examples/failing_rows.py", None),
    ("localbatch services", None),
    ("localbatch show TxService", None),
    ("localbatch run TxService examples/data/mtcars.csv -p 2 --out scores.csv", "RUN1"),
    ("head -4 scores.csv", None),
    (MAKE_PARQUET, None),
    ("localbatch run TxService mtcars.parquet -p 2 --out scores.parquet", "RUN2"),
    (SHOW_PARQUET, None),
    ("localbatch run TxService mtcars.parquet -p 2 --keep car --out keyed.parquet", None),
    (SHOW_KEYED, None),
    ("localbatch status", None),
    ("localbatch status {RUN1:8}", None),
    ("localbatch artifacts {RUN1:8} 1 --download answers", None),
    ("cat answers/answer.csv", None),
    ("localbatch run WeightClass@1.0 examples/data/mtcars.csv --out weights.csv", "RUN3"),
    ("localbatch failed {RUN3:8}", None),
    ("localbatch retry-failed {RUN3:8} --version 1.1", None),
    ("sed '3s/2.875/heavy/' examples/data/mtcars.csv > bad.csv", None),
    ("localbatch run TxService bad.csv", None),
    (MAKE_BIG, None),
    ("timeout --preserve-status -s INT 6 localbatch run TxService mtcars_x100.csv -p 2"
     " --out big.csv    # Ctrl-C after 6 s", "RUN4"),
    ("localbatch resume {RUN4} --force --out big.csv", None),
    ("localbatch logs {RUN4:8} | tail -3", None),
    ("localbatch verify", None),
    ("localbatch gc --dry-run", None),
    ("localbatch prune --older-than 7d", None),
    ("localbatch prune --older-than 0s --dry-run", None),
]


_EXECUTION = re.compile(r"^execution ([0-9a-f]{32})", re.M)
_PLACEHOLDER = re.compile(r"\{(\w+)(?::(\d+))?\}")


def _screen(text: str) -> str:
    """What a terminal shows: the last carriage-return segment of each line."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text.replace("\r\n", "\n"))
    lines = [line.rstrip("\r").split("\r")[-1].rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def _fill(command: str, ids: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        value = ids[match.group(1)]
        return value[: int(match.group(2))] if match.group(2) else value

    return _PLACEHOLDER.sub(one, command)


def _run(command: str, cwd: Path, env: dict[str, str]) -> tuple[str, int]:
    # script(1) gives the command a terminal, so the progress bar behaves as for a user;
    # a fresh pseudo-terminal is 0 columns wide until stty says otherwise.
    shell_command = f"stty cols 100 rows 40; {command.split('    #')[0]}"
    proc = subprocess.run(["script", "-qefc", shell_command, "/dev/null"], cwd=cwd, env=env,
                          capture_output=True, timeout=300)
    # Bytes, not text=True: universal newlines would turn each bar redraw into a line.
    return _screen(proc.stdout.decode()), proc.returncode


def transcript() -> str:
    with tempfile.TemporaryDirectory(prefix="localbatch-demo-") as tmp:
        cwd = Path(tmp)
        shutil.copytree(ROOT / "examples", cwd / "examples",
                        ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
        env = dict(os.environ, LOCALBATCH_HOME=str(cwd / "store"), COLUMNS="100", LINES="40",
                   TERM="xterm")
        ids: dict[str, str] = {}
        out = ["$ export LOCALBATCH_HOME=$PWD/store        # a fresh store for this session"]
        for template, name in COMMANDS:
            command = _fill(template, ids)
            text, status = _run(command, cwd, env)
            out.append(f"\n$ {command}")
            if text:
                out.append(text.replace(tmp, "~/localbatch"))
            if status:
                out.append(f"[exit status {status}]")
            if name:
                ids[name] = _EXECUTION.search(text).group(1)
            if "Ctrl-C" in command and not re.search(r": [1-9]\d*/\d+ rows recorded", text):
                raise SystemExit("no row was recorded before the Ctrl-C (a busy machine?): "
                                 "run it again")
        return "\n".join(out)


def main() -> None:
    page = CLI_PAGE.read_text()
    head, rest = page.split(START)
    _, tail = rest.split(END)
    block = f"{START}\n```console\n{transcript()}\n```\n{END}"
    CLI_PAGE.write_text(head + block + tail)
    print(f"rewrote the transcript in {CLI_PAGE.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
