"""A DataTable that knows vim keys, updates its rows by key instead of refilling, and shows
every cell as plain text (:func:`tui.fmt.safe`): a job named ``[/x]`` is not markup, an
escape sequence in a cell is shown, not sent to the terminal.

A row may also be given as a :data:`RowBuilder` (a function that returns its cells): it is
called only when the row is on screen, or read, so a poll of a 1,000-node lab builds and
compares the few dozen rows a terminal shows, not all of them; a row that scrolls into
view is built then.

About 420 lines, as one piece: ``sync``'s cell writes, the per-cell versions, the cached
lines it drops and the shared renders of equal cells are one bookkeeping over
``DataTable``'s caches; split apart, each half would reach into the other's state."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from rich.padding import Padding
from rich.segment import Segment
from rich.style import Style
from textual._two_way_dict import TwoWayDict
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Region
from textual.renderables.styled import Styled
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, CellType, ColumnKey, RowKey

from tui import fmt

#: A row's cells, built when the row is on screen (or read): see the module docstring.
RowBuilder = Callable[[], Sequence[object]]
Row = tuple[str, Sequence[object] | RowBuilder]
#: A cell by its row and column.
Cell = tuple[RowKey, ColumnKey]
#: Distinct cell looks kept rendered (a screenful is ~450 cells, many alike).
LOOKS_KEPT = 4096


class Lazy:
    """A cell built only when it is drawn. Two are equal when their keys are, so ``sync``
    compares what a cell is built from; a 1,000-node overview whose every node changes
    each poll builds Rich text for the rows on screen, not for every node. What it builds
    is shown as plain text like any cell (:func:`tui.fmt.safe`)."""

    __slots__ = ("_build", "built", "key")

    def __init__(self, key: Hashable, build: Callable[[], object]) -> None:
        self.key = key
        self._build = build
        #: The cell once drawn (None until then).
        self.built: object = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lazy) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        """What the cell shows, as plain text (as ``str`` of a ``Text`` cell is)."""
        return str(self.__rich__())

    def __rich__(self) -> Any:
        if self.built is None:
            self.built = fmt.safe(self._build())
        return self.built


class LabTable(DataTable[object]):
    """Rows are keyed by a string; ``sync`` updates them in place."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "first", "Top", show=False),
        Binding("G", "last", "Bottom", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=False)
        #: Per cell: how many times ``sync`` changed it.
        self._cell_versions: dict[tuple[RowKey | None, ColumnKey | None], int] = {}
        #: Per row: the cell list (or builder) ``sync`` last took. A screen that keeps its
        #: unchanged rows' lists passes the same object again, and that row is skipped unread.
        self._synced: dict[str, Sequence[object] | RowBuilder] = {}
        #: Rows given as builders that were not on screen: built when they are (or read).
        self._pending: dict[str, RowBuilder] = {}
        #: Rendered one-line Lazy cells by what they look like (:meth:`_render_look`).
        self._looks: LRUCache[Hashable, list[list[Segment]]] = LRUCache(LOOKS_KEPT)
        #: The same with their place (row and column) added, as drawn.
        self._placed: LRUCache[Hashable, list[list[Segment]]] = LRUCache(LOOKS_KEPT)
        #: The update counter and row order ``sync`` last saw in place.
        self._ordered: tuple[int, list[str]] = (-1, [])

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Any,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> Any:
        """Render a body cell, cached by that cell's own version.

        ``DataTable`` keys its caches on one global update counter, so changing one cell
        re-renders every visible cell and line, and recounts every row's offset. A cell
        written by ``sync`` does not bump that counter (it counts only structure: rows
        added, removed, sorted, columns); the cell's key here is that counter plus the
        cell's own version, row position and width, and the cached lines of its row are
        dropped (:meth:`_cells_changed`)."""
        if row_index < 0 or column_index < 0:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        count = self._update_count
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        row = self.rows.get(row_key) if row_key is not None else None
        data = self._data.get(row_key) if row_key is not None else None
        cell = data.get(column_key) if data is not None and column_key is not None else None
        if (
            isinstance(cell, Lazy)
            and row is not None
            and row.height == 1
            and not self.fixed_columns
        ):
            return self._render_look(
                cell, row_index, column_index, base_style, width, cursor, hover
            )
        version = self._cell_versions.get((row_key, column_key), 0)
        key: Hashable = (count, row_key, column_key, version, row_index, width)
        self._update_count = key  # type: ignore[assignment]  # only read as a cache key
        try:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        finally:
            self._update_count = count

    def _render_look(
        self,
        cell: Lazy,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool,
        hover: bool,
    ) -> list[list[Segment]]:
        """A one-line :class:`Lazy` cell, rendered through Rich once per look: two cells
        with equal keys draw the same (that is what their key says), so every row's
        "  3%" or empty bar is rendered once and shared. ``DataTable`` renders each cell
        with its row and column in the style (the mouse finds a cell by them); that is
        added to the shared segments here, which costs a fraction of a Rich render."""
        look = (
            cell.key,
            width,
            base_style,
            cursor,
            hover,
            self._show_hover_cursor,
            self._pseudo_class_state,
        )
        placed = (look, row_index, column_index)
        done = self._placed.get(placed)
        if done is not None:
            return done
        lines = self._looks.get(look)
        if lines is None:
            component_style, post_style = self._get_styles_to_render_cell(
                False,
                False,
                row_index < self.fixed_rows,
                hover,
                cursor,
                self.show_cursor,
                self._show_hover_cursor,
                self.cursor_foreground_priority == "css",
                self.cursor_background_priority == "css",
            )
            options = self.app.console_options.update_dimensions(width, 1).update(no_wrap=True)
            lines = self.app.console.render_lines(
                Styled(
                    Padding(cell, (0, self.cell_padding)),
                    pre_style=base_style + component_style,
                    post_style=post_style,
                ),
                options,
            )
            lines = [list(Segment.simplify(line)) for line in lines]
            self._looks.set(look, lines)
        meta = Style.from_meta({"row": row_index, "column": column_index})
        done = [list(Segment.apply_style(line, post_style=meta)) for line in lines]
        self._placed.set(placed, done)
        return done

    def _clear_caches(self) -> None:
        self._looks.clear()
        self._placed.clear()
        super()._clear_caches()

    def notify_style_update(self) -> None:
        self._looks.clear()
        self._placed.clear()
        super().notify_style_update()

    def render_lines(self, crop: Any) -> Any:
        """Build the rows that came into view (scrolled to, moved up) before drawing."""
        if self._pending:
            built = self._build_rows(self._visible_keys())
            if built:
                self._cells_changed(built, repaint=False)  # being drawn now
        return super().render_lines(crop)

    def get_row(self, row_key: RowKey | str) -> list[object]:
        self._build_now(row_key)
        return super().get_row(row_key)

    def get_cell(self, row_key: RowKey | str, column_key: ColumnKey | str) -> object:
        self._build_now(row_key)
        return super().get_cell(row_key, column_key)

    def get_column(self, column_key: ColumnKey | str) -> Iterable[object]:
        if self._pending:
            self._cells_changed(self._build_rows(list(self._pending)))
        return super().get_column(column_key)

    def _build_now(self, row_key: RowKey | str) -> None:
        key = row_key.value if isinstance(row_key, RowKey) else row_key
        if key is not None and key in self._pending:
            self._cells_changed(self._build_rows([key]))

    def _visible_keys(self) -> list[str]:
        """The keys of the rows on screen (every row is one line high)."""
        first = max(int(self.scroll_y), 0)
        last = min(first + self.size.height, self.row_count)
        keys = (self._row_locations.get_key(i) for i in range(first, last))
        return [k.value for k in keys if k is not None and k.value is not None]

    def _build_rows(self, keys: Iterable[str]) -> list[Cell]:
        """Build the pending rows among ``keys`` and write the cells that changed; those
        cells."""
        columns = list(self.columns)
        changed: list[Cell] = []
        for key in keys:
            build = self._pending.pop(key, None)
            data = self._data.get(RowKey(key)) if build is not None else None
            if build is not None and data is not None:
                self._write_cells(RowKey(key), data, columns, build(), changed)
        return changed

    def _write_cells(
        self,
        row_key: RowKey,
        data: dict[ColumnKey, object],
        columns: list[ColumnKey],
        cells: Sequence[object],
        changed: list[Cell],
    ) -> None:
        """Write the cells that differ from the row's, adding them to ``changed``."""
        versions = self._cell_versions
        for column, cell in zip(columns, cells, strict=False):
            after = fmt.safe(cell)
            if data.get(column) != after:
                data[column] = after
                at = (row_key, column)
                versions[at] = versions.get(at, 0) + 1
                changed.append(at)

    def _cells_changed(self, cells: list[Cell], *, repaint: bool = True) -> None:
        """Cells were written (and only cells): drop the cached lines of their rows and
        repaint those cells alone, so a poll that changed one figure per row costs one
        cell through Rich and one line's assembly per row, and the terminal is sent the
        cells, not the screen. The rest of the table's caches (other rows' lines, row
        offsets, the row order) stay valid."""
        if not cells:
            return
        rows = {row_key for row_key, _ in cells}
        # The line caches are keyed by the row (row_key first) or its y (first); a row is
        # one line high, under the header.
        header = self.header_height if self.show_header else 0
        ys = set()
        for row_key in rows:
            index = self._row_locations.get(row_key)
            if index is not None:
                ys.add(index + header)
        row_cache, line_cache = self._row_render_cache, self._line_cache
        for row_cache_key in [key for key in row_cache.keys() if key[0] in rows]:
            row_cache.discard(row_cache_key)
        for line_key in [key for key in line_cache.keys() if key[0] in ys]:
            line_cache.discard(line_key)
        if not repaint:
            return
        x_of = self._column_offsets()
        for row_key, column_key in cells:
            row_index = self._row_locations.get(row_key)
            placed = x_of.get(column_key)
            if row_index is not None and placed is not None:
                x, width = placed
                self._refresh_region(Region(x, row_index + header, width, 1))

    def _column_offsets(self) -> dict[ColumnKey, tuple[int, int]]:
        """Each column's x and width on the table (row labels first)."""
        offsets: dict[ColumnKey, tuple[int, int]] = {}
        x = self._row_label_column_width
        for column in self.ordered_columns:
            width = column.get_render_width(self)
            offsets[column.key] = (x, width)
            x += width
        return offsets

    def add_row(
        self,
        *cells: CellType,
        height: int | None = 1,
        key: str | None = None,
        label: Any = None,
    ) -> RowKey:
        """Every row, added by ``sync`` or not, is shown as plain text."""
        return super().add_row(
            *(fmt.safe(cell) for cell in cells), height=height, key=key, label=label
        )

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        """Measure new rows only where a measure is used: an auto-width column, a row
        label, an auto-height row. The dashboard's columns have their widths and its rows
        one line, and measuring every cell of 10,000 new jobs took seconds."""
        rows = list(new_rows)
        measure = any(column.auto_width for column in self.columns.values()) or any(
            (row := self.rows.get(key)) is not None and (row.label is not None or row.auto_height)
            for key in rows
        )
        super()._update_dimensions(rows if measure else ())

    def clear(self, columns: bool = False) -> LabTable:
        """Empty the table; the next ``sync`` writes every row afresh."""
        self._synced = {}
        self._pending = {}
        self._ordered = (-1, [])
        super().clear(columns)
        return self

    def action_first(self) -> None:
        self.move_cursor(row=0)

    def action_last(self) -> None:
        self.move_cursor(row=max(self.row_count - 1, 0))

    @property
    def current_key(self) -> str | None:
        """Key of the row under the cursor."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return None

    def _order_by_keys(self, order: list[str]) -> None:
        """Sort once by row key. ``DataTable.sort`` only sees cell values, so this sets
        the row order the same way it does (``_row_locations``)."""
        self._row_locations = TwoWayDict({RowKey(key): i for i, key in enumerate(order)})
        self._update_count += 1
        self.refresh()

    def sync(self, rows: Sequence[Row]) -> None:
        """Make the table show ``rows`` in that order: add, update changed cells, remove,
        sort once. Unchanged cells are not touched, and changed ones are written together
        with one refresh, so an idle poll costs no repaint. A row whose cell list (or
        builder) is the very one of the last sync is not compared at all: with 10,000 jobs,
        comparing every cell of every row was most of a poll. A row given as a builder is
        built now only when it is on screen (see the module docstring)."""
        keep = self.current_key
        wanted = {key: cells for key, cells in rows}
        gone = {row_key for row_key in self.rows if row_key.value not in wanted}
        for row_key in gone:
            self.remove_row(row_key)
            if row_key.value is not None:
                self._pending.pop(row_key.value, None)
        if gone:
            self._cell_versions = {
                cell: n for cell, n in self._cell_versions.items() if cell[0] not in gone
            }
        synced, self._synced = self._synced, {}
        columns = list(self.columns)
        blank = [None] * len(columns)
        changed: list[Cell] = []
        now = self._synced
        for key, cells in rows:
            now[key] = cells
            if callable(cells) and key in synced:  # a row of the last sync: build it later
                self._pending[key] = cells
                continue
            row_key = RowKey(key)
            data = self._data.get(row_key)
            if synced.get(key) is cells and data is not None:
                continue
            if callable(cells):
                self._pending[key] = cells
                if data is None or row_key not in self.rows:
                    self.add_row(*blank, key=key)
                continue
            self._pending.pop(key, None)
            if data is None or row_key not in self.rows:
                self.add_row(*cells, key=key)
                continue
            self._write_cells(row_key, data, columns, cells, changed)
        order = [key for key, _ in rows]
        # The table's order can only have moved if its structure did (rows added,
        # removed or sorted bump the update counter) or the order asked for is another.
        if (self._update_count, order) != self._ordered:
            if [row.key.value for row in self.ordered_rows] != order:
                self._order_by_keys(order)
            self._ordered = (self._update_count, order)
        if self._pending and self.size.height:
            changed += self._build_rows(self._visible_keys())
        self._cells_changed(changed)
        if keep is not None and keep in wanted:
            index = self.get_row_index(keep)
            if self.cursor_row != index:
                self.move_cursor(row=index, animate=False)
