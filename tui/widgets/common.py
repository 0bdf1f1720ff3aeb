"""Bits the panels share: a text progress bar and a DataTable that keeps the cursor across refreshes."""
from __future__ import annotations

from typing import Any, Iterable

from rich.text import Text
from textual import events
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist


def bar(fraction: float, width: int = 12) -> Text:
    """``fraction`` (0..1) as a bar of block characters, coloured by the theme-neutral 'bar' styles."""
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    return Text.assemble(("█" * full, "bold"), ("░" * (width - full), "dim"))


class Table(DataTable):
    """A DataTable refilled in place: the selected row (by key) survives a refresh."""

    DEFAULT_CSS = "Table { height: 1fr; }"

    def __init__(self, *columns: str, **kw: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        # columns exist from the start: rows may arrive (from a worker) before the table is mounted
        self.add_columns(*columns)

    def refill(self, rows: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        keep = self.selected_key()
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        if keep is not None:
            for i, row in enumerate(self.ordered_rows):
                if row.key.value == keep:
                    self.move_cursor(row=i, animate=False)
                    break

    async def _on_idle(self, event: events.Idle) -> None:
        # textual 8.2 measures new rows on idle but can keep lines painted with the old column widths in its
        # cache (a table filled before its first paint showed 4-character columns): repaint after measuring
        measuring = self._require_update_dimensions or bool(self._updated_cells)
        await super()._on_idle(event)
        if measuring:
            self._clear_caches()
            self.refresh()

    def selected_key(self) -> str | None:
        if self.row_count == 0:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except (CellDoesNotExist, RowDoesNotExist):      # a cursor left on a row that a refill removed
            return None
