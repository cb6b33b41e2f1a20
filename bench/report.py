"""A benchmark's table in docs/, rewritten on every run, above the notes people wrote
about it, which are kept: the table ends at MARKER, everything after it is left as it
is. A file without the marker keeps all of its old text below the new table."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_backend import atomic  # noqa: E402

MARKER = "<!-- bench output above (rewritten by each run); notes below are kept -->"


def write_table(path: Path, table: str) -> None:
  path = Path(path)
  old = path.read_text() if path.exists() else ""
  notes = old.split(MARKER, 1)[1] if MARKER in old else old
  text = f"{table.rstrip()}\n\n{MARKER}\n"
  if notes.strip():
    text += "\n" + notes.lstrip("\n")
  atomic.write_text(path, text)
