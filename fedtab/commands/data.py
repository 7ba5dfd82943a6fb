"""Data commands: ``fedtab inspect`` and the ``fedtab schema`` group (infer, check, import-sdv, export-sdv).

Everything here runs inside one site on that site's own table: ``inspect`` shows per-column counts to
the local operator and sends nothing anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

import connectors
from fedtab.commands.common import ReplaceOpt, TableOpt, check_output_file, command, stdout
from fedtab.errors import SchemaError
from fedtab.schema import TableSchema, atomic_write_text
from fedtab.sdv_metadata import schema_from_sdv, schema_to_sdv

SourceArg = typer.Argument(..., metavar="SOURCE", show_default=False,
                           help="A .csv, .csv.gz or .parquet file, or a SQLAlchemy URL (with --table).")
MissingOpt = typer.Option(None, "--missing", "-m", metavar="TEXT",
                          help="A raw value that means missing (repeat for several). Default: '?'.")
SchemaOutputOpt = typer.Option(None, "--output", "-o", metavar="FILE",
                               help="Write the schema JSON here (default: print it).")


def register(app: typer.Typer) -> None:
    command(app, "inspect")(inspect_cmd)
    schema_app = typer.Typer(help="Infer, check and convert table schemas (JSON).", no_args_is_help=True,
                             rich_markup_mode="rich")
    command(schema_app, "infer")(schema_infer)
    command(schema_app, "check")(schema_check)
    command(schema_app, "import-sdv")(schema_import_sdv)
    command(schema_app, "export-sdv")(schema_export_sdv)
    app.add_typer(schema_app, name="schema")


def inspect_cmd(
    source: str = SourceArg,
    table: Optional[str] = TableOpt,
    missing: Optional[List[str]] = MissingOpt,
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """Show rows, columns, inferred type, missing share and cardinality of a table (stays local)."""
    scan = connectors.scan_table(source, table=table, missing_markers=missing or ["?"])
    columns = []
    for spec in scan.schema.columns:
        prof = scan.profiles[spec.name]
        columns.append({
            "name": spec.name,
            "type": spec.type + (f"/{spec.subtype}" if spec.subtype else ""),
            "missing_share": round(prof.missing / prof.rows, 4) if prof.rows else 0.0,
            "cardinality": len(prof.distinct),
        })
    if as_json:
        doc = {"source": scan.source, "rows": scan.rows, "columns": columns}
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    out = Table(title=f"{scan.source}: {scan.rows} rows x {len(columns)} columns")
    for head, justify in (("column", "left"), ("type", "left"), ("missing", "right"), ("distinct", "right")):
        out.add_column(head, justify=justify)
    for c in columns:
        out.add_row(c["name"], c["type"], f"{c['missing_share']:.1%}", str(c["cardinality"]))
    stdout().print(out)


def schema_infer(
    source: str = SourceArg,
    table: Optional[str] = TableOpt,
    missing: Optional[List[str]] = MissingOpt,
    output: Optional[Path] = SchemaOutputOpt,
    replace: bool = ReplaceOpt,
) -> None:
    """Infer a schema from a table (stays local).

    The schema holds no observed minima, maxima or category lists (they are private data): review it
    and declare public bounds and category domains by hand before a DP job."""
    _check_output(output, replace)
    schema = connectors.scan_table(source, table=table, missing_markers=missing or ["?"]).schema
    _emit(schema.to_json(), output, f"{len(schema)} columns")


def schema_check(
    source: str = SourceArg,
    schema: Path = typer.Option(..., "--schema", "-s", metavar="FILE", help="The schema JSON file to check against."),
    table: Optional[str] = TableOpt,
) -> None:
    """Check a table against a schema: list every problem (exit code 4) or confirm it matches."""
    spec = TableSchema.load(schema)
    df = connectors.read_table(source, table=table, schema=spec)
    typer.echo(f"OK: {connectors.source_label(source, table)} matches {schema} ({len(df)} rows, {df.shape[1]} columns).")


def schema_import_sdv(
    metadata: Path = typer.Argument(..., metavar="METADATA", show_default=False, help="An SDV metadata JSON file."),
    output: Optional[Path] = SchemaOutputOpt,
    table: Optional[str] = typer.Option(None, "--table", "-t", metavar="NAME",
                                        help="Which table of a multi-table metadata file."),
    replace: bool = ReplaceOpt,
) -> None:
    """Convert SDV metadata JSON into a fedtab schema."""
    _check_output(output, replace)
    schema = schema_from_sdv(_read_json(metadata), table=table)
    _emit(schema.to_json(), output, f"{len(schema)} columns")


def schema_export_sdv(
    schema: Path = typer.Argument(..., metavar="SCHEMA", show_default=False, help="A fedtab schema JSON file."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE",
                                          help="Write the SDV metadata JSON here (default: print it)."),
    replace: bool = ReplaceOpt,
) -> None:
    """Convert a fedtab schema into SDV metadata JSON (V1)."""
    _check_output(output, replace)
    meta = schema_to_sdv(TableSchema.load(schema))
    _emit(json.dumps(meta, indent=2, ensure_ascii=False), output, "SDV metadata")


def _read_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(f"{path}: file not found.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SchemaError(f"{path}: cannot read the file ({e}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None


def _check_output(output: Optional[Path], replace: bool) -> None:
    if output is not None:
        check_output_file(output, replace=replace, what="output file")


def _emit(text: str, output: Optional[Path], what: str) -> None:
    if output is None:
        typer.echo(text)
        return
    atomic_write_text(output, text + "\n")
    typer.echo(f"wrote {output} ({what})")
