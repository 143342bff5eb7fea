"""How every command prints a table: a rich table on a terminal, TSV anywhere else (`--wide`)."""

from __future__ import annotations

import sys

import click

from supervisor.operators.cli.app import console, err_console

Cell = str | list[str] | None  # a list: one item per line on a terminal, comma-separated in TSV
_WIDE = "job_supervisor.wide"  # click Context.meta key (meta is shared by every context of a run)


def _remember_wide(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_WIDE] = True


#: Added to every command that prints a table.
wide_option = click.option(
    "--wide", is_flag=True, expose_value=False, callback=_remember_wide,
    help="On a terminal, never cut a value (long ones fold). Piped output is always whole values (TSV).")


def _tsv(value: str) -> str:
    # The escapes of PostgreSQL's COPY text format, so every row stays one line of N fields.
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def print_table(columns: list[tuple[str, bool] | tuple[str, bool, int]], rows: list[list[Cell]], *,
                title: str | None = None, keyvalue: bool = False, stderr: bool = False) -> None:
    """Print a table: the one way every command prints one.

    On a terminal, a rich table: columns marked True (ids, names) stay on one line when they fit
    the terminal (else they fold too: rich would cut them), the rest fold, and a column's optional
    limit shortens long text (`…`); with `--wide` nothing is shortened. Nothing is cut. Anywhere
    else (a pipe, a file), TSV a program can read: a header line, then one line per row with
    full values; tab, newline, carriage return and backslash are written as \\t \\n \\r \\\\.
    A titled table follows another one: in TSV it starts after an empty line.

    Args:
        columns: (name, one line) or (name, one line, limit on a terminal).
        rows: one cell per column: a string, a list of strings (one per line) or None.
        keyvalue: a two-column field/value listing (no box and no header on a terminal).
        stderr: print to stderr instead of stdout.
    """
    if not (sys.stderr if stderr else sys.stdout).isatty():
        lines = [] if title is None else [""]
        lines += ["\t".join(_tsv(str(c[0])) for c in columns)]
        lines += ["\t".join(_tsv(",".join(v) if isinstance(v, list) else v or "") for v in row) for row in rows]
        click.echo("\n".join(lines), err=stderr)
        return
    from rich import box  # noqa: PLC0415 (a terminal only: piped output is TSV)
    from rich.cells import cell_len  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    out = err_console if stderr else console
    ctx = click.get_current_context(silent=True)
    wide = bool(ctx and ctx.meta.get(_WIDE))
    limits = [None if wide or not limit else limit[0] for _name, _keep, *limit in columns]
    texts = [[v if n is None or len(v) <= n else v[:n - 1] + "…"
              for v, n in zip(("\n".join(c) if isinstance(c, list) else c or "" for c in row), limits, strict=True)]
             for row in rows]
    # Whole one-line ids and names, plus 4 cells of every other column, 3 per column of padding and rule.
    one_line = sum(max(cell_len(t) for t in [str(c[0]), *(r[i] for r in texts)]) if c[1] else 4
                   for i, c in enumerate(columns)) + 3 * len(columns) + 1 <= out.width
    table = Table(title=title, show_header=not keyvalue, box=None if keyvalue else box.HEAVY_HEAD)
    for i, (name, keep, *_limit) in enumerate(columns):
        table.add_column(name, no_wrap=keep and one_line, overflow="fold",
                         style="bold" if keyvalue and i == 0 else None)
    for cells in texts:
        table.add_row(*cells)
    out.print(table)


def utc(iso: str) -> str:
    """An ISO-8601 UTC time as `YYYY-MM-DD HH:MM:SS`, for a column headed (UTC)."""
    return iso[:19].replace("T", " ")
