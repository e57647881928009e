"""A run's tables on disk as they grow: CSV files appended row by row, for a run that has no end
(`thundersim serve`). The Recorder hands rows over instead of keeping them, so memory stays flat
however long the proxy serves, and a proxy that is killed (even for memory) leaves the tables
of what it served; at a clean stop they are read back and written as the run's Parquet tables.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where tables are built, not at start-up
    import pandas as pd

# provenance: estimate — rows buffered before a write: a few hundred rows is one small write per
# second at thousands of calls per minute, and at most that many rows lost to a SIGKILL
FLUSH_ROWS = 256


class Journal:
    """Appends rows of named tables to `<folder>/<name>.csv` (a header first)."""

    def __init__(self, folder: Path, tables: dict[str, list[str]]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.columns = dict(tables)
        self._files = {}
        self._writers = {}
        self._pending = 0
        self.rows = dict.fromkeys(tables, 0)
        for name, columns in tables.items():
            f = open(self.path(name), "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._files[name] = f
            self._writers[name] = csv.writer(f)
            self._writers[name].writerow(columns)
        self.flush()

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.csv"

    def append(self, name: str, row) -> None:
        self._writers[name].writerow(row)
        self.rows[name] += 1
        self._pending += 1
        if self._pending >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()
        self._pending = 0

    def frame(self, name: str) -> pd.DataFrame:
        """The table so far (an empty one with its columns if it has no rows)."""
        import pandas as pd

        self.flush()
        if self.rows[name] == 0:
            return pd.DataFrame(columns=self.columns[name])
        # strings stay strings: a program id of digits is not a number
        return pd.read_csv(self.path(name), dtype={"program": str, "tool": str, "workload": str})

    def close(self, remove: bool = False) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)
