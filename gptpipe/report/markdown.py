"""Markdown of the study tables and stage reports as HTML, with table cells reformatted for people.

The markdown comes from our own writers (`studies.runner.write_table`: a pandas pipe table and "- "
notes; the scaling and evaluate reports: headings, paragraphs, tables, quotes). markdown-it-py parses
it: CommonMark with GFM tables, and already installed with dvc (through rich). Raw HTML is off, so a
`<` in a note or a generated answer is shown, never run.

The tables are then edited as markdown-it tokens, not as HTML text: numbers get separators and at
most 4 significant digits, column names read as words, numeric columns align right, and the rows with
the lowest value of one column are marked.
"""

from __future__ import annotations

from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from gptpipe.report.format import cell_number, fmt, humanize, parse_number


def markdown_html(text: str, *, heading_offset: int = 2, best_column: str | None = None) -> Markup:
    """HTML of `text`. heading_offset pushes `#` down the page's outline (the page has its own h1 and
    h2); best_column marks the table rows holding that column's lowest value."""
    md = _parser()
    tokens = md.parse(text)
    _shift_headings(tokens, heading_offset)
    tokens = _tables_for_people(tokens, best_column)
    return Markup(md.renderer.render(tokens, md.options, {}))


def inline_html(text: str) -> Markup:
    """One line of markdown (a title) as inline HTML: `code` and **bold**, no paragraph around it."""
    return Markup(_parser().renderInline(text))


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def _shift_headings(tokens: list[Token], offset: int) -> None:
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1:]) + offset, 6)}"


# -- tables ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    open: Token  # th_open / td_open: carries the alignment and gets our class
    inline: Token  # the cell's text, parsed: content is the source, children the inline tokens

    @property
    def number(self) -> int | float | None:
        return parse_number(self.inline.content)


@dataclass(frozen=True)
class Row:
    open: Token  # tr_open: gets class "best"
    cells: list[Cell]


def _tables_for_people(tokens: list[Token], best_column: str | None) -> list[Token]:
    """The token stream with every table reformatted, scrollable, and followed by its legend."""
    out: list[Token] = []
    start = None
    for i, token in enumerate(tokens):
        if token.type == "table_open":
            start = i
        elif token.type == "table_close" and start is not None:
            out += _table(tokens[start:i + 1], best_column)
            start = None
        elif start is None:
            out.append(token)
    return out


def _table(tokens: list[Token], best_column: str | None) -> list[Token]:
    header, *body = _rows(tokens)
    for cell in header.cells:
        _humanize_text(cell.inline)
    right = _right_aligned(header, body)
    for row in body:
        for column, cell in enumerate(row.cells):
            _format_number(cell)
            cell.open.attrs = {"class": "num"} if right[column] else {}
    for cell in header.cells:
        cell.open.attrs = {}  # alignment is said by the body cells' class, not an inline style
    best = _best_rows(header, body, best_column)
    for row in best:
        row.open.attrSet("class", "best")
    scroll_open = Token("scroll_open", "div", 1, attrs={"class": "scroll"}, block=True)
    scroll_close = Token("scroll_close", "div", -1, block=True)
    legend = _paragraph(f"Highlighted: the lowest {humanize(best_column)}.", "legend") if best else []
    return [scroll_open, *tokens, scroll_close, *legend]


def _rows(tokens: list[Token]) -> list[Row]:
    rows: list[Row] = []
    for i, token in enumerate(tokens):
        if token.type == "tr_open":
            rows.append(Row(token, []))
        elif token.type in ("th_open", "td_open"):
            rows[-1].cells.append(Cell(token, tokens[i + 1]))
    return rows


def _right_aligned(header: Row, body: list[Row]) -> list[bool]:
    """A column aligns right when its writer said so (`--:`) or every filled cell in it is a number."""
    return [
        cell.open.attrGet("style") == "text-align:right"
        or all(row.cells[c].number is not None for row in body if row.cells[c].inline.content.strip())
        for c, cell in enumerate(header.cells)
    ]


def _best_rows(header: Row, body: list[Row], column: str | None) -> list[Row]:
    """The rows with the column's lowest value, ties judged by what the reader sees (fmt)."""
    names = [cell.inline.content.strip() for cell in header.cells]
    if column is None or column not in names:
        return []
    index = names.index(column)
    numbered = [(row, row.cells[index].number) for row in body if row.cells[index].number is not None]
    if not numbered:
        return []
    lowest = fmt(min(value for _, value in numbered))
    return [row for row, value in numbered if fmt(value) == lowest]


def _format_number(cell: Cell) -> None:
    value = cell.number
    if value is not None:
        cell.inline.children = [Token("text", "", 0, content=cell_number(cell.inline.content, value))]


def _humanize_text(inline: Token) -> None:
    """Column names as words, in their text only: a `code` span in a header keeps its underscores."""
    for child in inline.children or []:
        if child.type == "text":
            child.content = humanize(child.content)


def _paragraph(text: str, css_class: str) -> list[Token]:
    inline = Token("inline", "", 0, content=text, children=[Token("text", "", 0, content=text)], block=True)
    return [Token("paragraph_open", "p", 1, attrs={"class": css_class}, block=True), inline,
            Token("paragraph_close", "p", -1, block=True)]
