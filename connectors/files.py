"""CSV (.csv, .csv.gz) and Parquet files: chunked readers and atomic writers.

CSV is read as text only (every column a string, empty cells kept as ``''``): typing is the schema's
job, never a guess by the parser. Reading streams blocks through pyarrow, so a large file is never
held as raw text and typed table at once. Writers go through a temp file in the destination folder
and a rename, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import csv
import gzip
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pacompute
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedtab.errors import SourceError

EXTENSIONS = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
BLOCK_SIZE = 1 << 20
PARQUET_BATCH = 65_536
MAX_RAGGED_SHOWN = 5


def file_kind(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return EXTENSIONS[ext]
    raise SourceError(
        f"{path}: unknown file type {''.join(path.suffixes) or '(no extension)'!r}; "
        f"expected one of {sorted(EXTENSIONS)} or a SQLAlchemy URL such as sqlite:///data.db."
    )


def check_readable(path: Path) -> str:
    """Raise SourceError unless ``path`` is an existing, readable file of a known kind."""
    if not path.exists():
        hint = "" if path.is_absolute() else f" (a relative path starts at the current folder, {Path.cwd()})"
        raise SourceError(f"{path}: no such file. Check the path{hint}.")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory; expected a .csv, .csv.gz or .parquet file.")
    kind = file_kind(path)
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: permission denied; the file is not readable by this user.")
    return kind


def open_file(path: Path) -> tuple[list[str], Iterator[pd.DataFrame]]:
    """Column names and an iterator of raw chunks of a file (CSV: all strings)."""
    kind = check_readable(path)
    if kind == "csv":
        names = _csv_header(path)
        return names, _csv_chunks(path, names)
    return _parquet_open(path)


# -- CSV -----------------------------------------------------------------------------------------
def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _csv_header(path: Path) -> list[str]:
    try:
        with _open_binary(path) as f:
            first = f.readline()
    except (OSError, EOFError) as e:
        raise SourceError(f"{path}: cannot read the file ({e}). Is it a valid {''.join(path.suffixes)} file?") from None
    if not first.strip():
        raise SourceError(f"{path}: the file is empty (no header line); expected a header and data rows.")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(_not_utf8(path, 1, e.start, first[e.start:e.start + 1])) from None
    names = next(csv.reader([text.rstrip("\r\n")]))
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise SourceError(f"{path}: duplicate column name(s) {dups} in the header; each column needs its own name.")
    blank = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise SourceError(f"{path}: header column(s) {blank} have no name; name every column.")
    return names


def _csv_chunks(path: Path, names: list[str]) -> Iterator[pd.DataFrame]:
    keys = [f"c{i}" for i in range(len(names))]
    ragged: list[tuple[int, int]] = []
    rows = 0

    def on_bad_row(row):  # pyarrow gives the physical line number and the field count
        ragged.append((row.number, row.actual_columns))
        return "skip"

    try:
        reader = pacsv.open_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=BLOCK_SIZE, skip_rows=1, column_names=keys),
            # A blank line is an empty value in a one-column table, and skipped otherwise.
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_bad_row, ignore_empty_lines=len(names) > 1),
            convert_options=pacsv.ConvertOptions(
                column_types={k: pa.string() for k in keys},
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        for batch in reader:
            if batch.num_rows:
                _refuse_runaway_quote(path, batch, names, rows)
                rows += batch.num_rows
                yield _batch_to_frame(batch, names)
    except SourceError:
        raise
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        if "UTF8" in str(e) or "utf-8" in str(e).lower():
            raise SourceError(_locate_bad_utf8(path)) from None
        if "Empty CSV file" in str(e):
            rows = 0
        else:
            raise SourceError(f"{path}: cannot read the file ({e}).") from None
    if ragged:
        shown = ", ".join(f"line {n} has {k} fields" for n, k in ragged[:MAX_RAGGED_SHOWN])
        more = f" and {len(ragged) - MAX_RAGGED_SHOWN} more" if len(ragged) > MAX_RAGGED_SHOWN else ""
        raise SourceError(
            f"{path}: {len(ragged)} ragged row(s): {shown}{more}; the header has {len(names)} fields. "
            "Fix the rows (a stray comma? quote fields that contain commas)."
        )
    if rows == 0:
        raise SourceError(f"{path}: the file has a header but no data rows.")


def _refuse_runaway_quote(path: Path, batch: pa.RecordBatch, names: list[str], rows_before: int) -> None:
    """A value holding a line break: a quote that never closed swallowed the lines after it (a table read
    as 1 row otherwise). Refused with the line it starts on (values never span lines in a table here)."""
    import pyarrow.compute as pc

    for name, arr in zip(names, batch.columns):
        hit = pc.or_(pc.match_substring(arr, "\n"), pc.match_substring(arr, "\r"))
        hit = pc.fill_null(hit, False)
        if pc.any(hit).as_py():
            first = int(pc.index(hit, True).as_py())
            line = rows_before + first + 2  # the header is line 1
            raise SourceError(
                f"{path}: line {line}, column '{name}': a quoted value runs past the end of its line (an "
                "unterminated quote? it swallowed the lines after it). Close the quote, or remove the stray "
                "'\"'; values that contain line breaks are not supported.")


def _batch_to_frame(batch: pa.RecordBatch, names: list[str]) -> pd.DataFrame:
    """Object columns whose cells share one Python string per distinct value.

    ``to_pandas`` would make one string object per cell; dictionary-encoding first makes one per
    distinct value in the block, which keeps the peak memory of a large read close to the typed table.
    """
    cols = {}
    for name, arr in zip(names, batch.columns):
        enc = pacompute.dictionary_encode(arr)
        labels = np.asarray(enc.dictionary.to_pylist(), dtype=object)
        cols[name] = labels.take(enc.indices.to_numpy(zero_copy_only=False))
    return pd.DataFrame(cols, columns=names)


def _not_utf8(path: Path, line: int, offset: int, byte: bytes) -> str:
    where = "of the decompressed data " if path.name.lower().endswith(".gz") else ""
    return (
        f"{path}: not UTF-8 text: byte 0x{byte.hex()} at byte offset {offset} {where}(line {line}). "
        "Re-encode the file as UTF-8, e.g. 'iconv -f latin1 -t utf-8 in.csv > out.csv'."
    )


def _locate_bad_utf8(path: Path) -> str:
    offset = 0
    with _open_binary(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return _not_utf8(path, lineno, offset + e.start, line[e.start:e.start + 1])
            offset += len(line)
    return f"{path}: not UTF-8 text. Re-encode the file as UTF-8."


# -- Parquet -------------------------------------------------------------------------------------
def _nullable(t: pa.DataType):
    """Integers and booleans with nulls stay exact (Int64/boolean), not float64 with NaN."""
    if pa.types.is_integer(t):
        return pd.Int64Dtype()
    if pa.types.is_boolean(t):
        return pd.BooleanDtype()
    return None


def _parquet_open(path: Path) -> tuple[list[str], Iterator[pd.DataFrame]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: not a readable Parquet file ({e}).") from None
    names = list(pf.schema_arrow.names)
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise SourceError(f"{path}: duplicate column name(s) {dups}; each column needs its own name.")
    if pf.metadata.num_rows == 0:
        raise SourceError(f"{path}: the file has columns {names} but no rows.")

    forms = _parquet_forms(pf.schema_arrow)

    def chunks() -> Iterator[pd.DataFrame]:
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
                frame = batch.to_pandas(types_mapper=_nullable)
                frame.attrs["fedtab_forms"] = forms  # the file's own dtypes (read nullable above)
                yield frame
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{path}: cannot read the Parquet data ({e}).") from None

    return names, chunks()


def _parquet_forms(schema: pa.Schema) -> dict[str, str]:
    """How the file holds each column, for schema inference (``fedtab.inference.input_form``): the pandas
    dtype the writer recorded (pandas' metadata in the file), else the value form of its Arrow type."""
    meta = {c.get("name"): ("category" if c.get("pandas_type") == "categorical" else c.get("numpy_type"))
            for c in (schema.pandas_metadata or {}).get("columns", [])}
    out = {}
    for field in schema:
        numpy_type = meta.get(field.name)
        if numpy_type is not None:
            out[field.name] = "datetime64[ns]" if str(numpy_type).startswith("datetime64") else str(numpy_type)
        elif pa.types.is_integer(field.type):
            out[field.name] = "pyint"
        elif pa.types.is_boolean(field.type):
            out[field.name] = "pybool"
        elif pa.types.is_floating(field.type):
            out[field.name] = "float64"
    return out


# -- writing -------------------------------------------------------------------------------------
def write_file(df: pd.DataFrame, path: Path, *, if_exists: str) -> Path:
    """Write ``df`` (a typed table) atomically: temp file in the same folder, then rename."""
    kind = file_kind(path)
    if path.is_dir():
        raise SourceError(f"{path}: is a directory; give a file name to write to.")
    if path.exists() and if_exists == "fail":
        raise SourceError(f"{path}: already exists; pass if_exists='replace' (CLI: --replace) to overwrite it.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise SourceError(f"{path}: cannot write here ({e.strerror}).") from None
    try:
        if kind == "csv":
            gz = path.name.lower().endswith(".gz")
            df.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0} if gz else None)
        else:
            df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, ValueError, pa.ArrowException) as e:
        Path(tmp).unlink(missing_ok=True)
        raise SourceError(f"{path}: write failed, nothing was written ({e}).") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
