import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # noqa: E402


def test_a_new_file_gets_the_table_and_the_marker(tmp_path):
  path = tmp_path / "docs" / "t.md"
  report.write_table(path, "| a |\n|---|\n| 1 |")
  assert path.read_text() == f"| a |\n|---|\n| 1 |\n\n{report.MARKER}\n"


def test_a_rerun_replaces_the_table_and_keeps_the_notes(tmp_path):
  path = tmp_path / "t.md"
  report.write_table(path, "| a |\n|---|\n| 1 |")
  path.write_text(path.read_text() + "\nWhy 1: a note.\n\n## More\n")
  report.write_table(path, "| a |\n|---|\n| 2 |\n")
  assert path.read_text() == (f"| a |\n|---|\n| 2 |\n\n{report.MARKER}\n"
                              "\nWhy 1: a note.\n\n## More\n")


def test_a_file_without_the_marker_loses_nothing(tmp_path):
  path = tmp_path / "t.md"
  path.write_text("old table\n\nold notes\n")
  report.write_table(path, "new table")
  assert path.read_text() == f"new table\n\n{report.MARKER}\n\nold table\n\nold notes\n"
