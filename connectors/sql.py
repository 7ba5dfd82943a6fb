"""SQL tables through SQLAlchemy (SQLite, PostgreSQL, ...): streamed reads and all-or-nothing writes.

A write goes to a fresh temp table, then, inside the same transaction, the old table (if replacing) is
dropped and the temp table renamed: a failure rolls everything back and leaves no partial table.
"""

from __future__ import annotations

import re

import uuid
from pathlib import Path
from typing import Iterator

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from fedtab.errors import SourceError

CHUNK_ROWS = 50_000


def is_url(source: object) -> bool:
    return isinstance(source, str) and "://" in source


def redact(url: str) -> str:
    """The URL with its password hidden (also when it does not parse: ``user:secret@`` -> ``user:***@``)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def _engine(url: str, *, must_exist: bool) -> Engine:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise SourceError(
            f"{redact(url)}: not a valid SQLAlchemy URL ({e}); expected e.g. sqlite:///data.db or "
            "postgresql+psycopg://user@host:5432/dbname."
        ) from None
    if parsed.get_backend_name() == "sqlite" and must_exist:
        db = parsed.database
        if db and db != ":memory:" and not Path(db).is_file():
            raise SourceError(f"{redact(url)}: no such SQLite database file {db!r}.")
    try:
        engine = sa.create_engine(parsed)
    except (NoSuchModuleError, ImportError) as e:
        raise SourceError(
            f"{redact(url)}: unknown or uninstalled database driver ({e}). Use e.g. 'sqlite:///file.db' "
            "or 'postgresql+psycopg://...' (pip install 'fedtab[postgres]')."
        ) from None
    except (ArgumentError, ValueError, TypeError) as e:
        raise SourceError(f"{redact(url)}: invalid database URL ({e}).") from None
    if engine.dialect.name == "sqlite":
        _transactional_ddl(engine)
    return engine


def _transactional_ddl(engine: Engine) -> None:
    """Make SQLite's CREATE/DROP/ALTER part of the transaction (pysqlite commits DDL on its own).

    This is the recipe from SQLAlchemy's SQLite documentation ("Serializable isolation / Savepoints /
    Transactional DDL"): switch off pysqlite's own transaction handling and emit BEGIN ourselves.
    """

    @sa.event.listens_for(engine, "connect")
    def _no_autobegin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")


def _connect_error(url: str, e: Exception) -> SourceError:
    reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
    return SourceError(f"{redact(url)}: cannot use the database ({type(e).__name__}: {reason}).")


def open_sql(url: str, table: str | None) -> tuple[list[str], Iterator[pd.DataFrame]]:
    """Column names and an iterator of chunks of ``table`` (streamed with a server-side cursor)."""
    engine = _engine(url, must_exist=True)
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            if table is None or table not in tables:
                what = "a database source needs a table name (--table)" if table is None else f"no table {table!r}"
                raise SourceError(f"{redact(url)}: {what}; tables in this database: {sorted(tables) or 'none'}.")
            described = sa.inspect(conn).get_columns(table)
            columns = [c["name"] for c in described]
            rows = conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()
    except SQLAlchemyError as e:
        engine.dispose()
        raise _connect_error(url, e) from None
    if rows == 0:
        engine.dispose()
        raise SourceError(f"{redact(url)}: table {table!r} has columns {columns} but no rows.")
    query = sa.select(*[sa.column(c) for c in columns]).select_from(sa.table(table))
    forms = {c["name"]: f for c in described if (f := _sql_form(c["type"])) is not None}

    def chunks() -> Iterator[pd.DataFrame]:
        try:
            with engine.connect() as conn:
                streaming = conn.execution_options(stream_results=True)
                for chunk in pd.read_sql_query(
                    query, streaming, chunksize=CHUNK_ROWS, dtype_backend="numpy_nullable"):
                    chunk.attrs["fedtab_forms"] = forms  # the column types (read nullable above)
                    yield chunk
        except SQLAlchemyError as e:
            raise _connect_error(url, e) from None
        finally:
            engine.dispose()

    return columns, chunks()


def _sql_form(sql_type) -> str | None:
    """How a SQL column type holds its values, for schema inference (``fedtab.inference.input_form``):
    integers and booleans by their values' form (``int64``, or ``Int64`` with NULLs), reals as
    ``float64``, text as ``object``, timestamps as ``datetime64[ns]``."""
    if isinstance(sql_type, sa.Boolean):
        return "pybool"
    if isinstance(sql_type, sa.Integer):
        return "pyint"
    if isinstance(sql_type, (sa.Float, sa.Numeric)):
        return "float64"
    if isinstance(sql_type, (sa.DateTime, sa.Date)):
        return "datetime64[ns]"
    if isinstance(sql_type, sa.String):
        return "object"
    return None


def write_sql(df: pd.DataFrame, url: str, table: str, *, if_exists: str) -> None:
    """Write ``df`` as ``table`` in one transaction (temp table + rename): all or nothing."""
    engine = _engine(url, must_exist=False)
    tmp = f"_fedtab_tmp_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as conn:
            exists = sa.inspect(conn).has_table(table)
            if exists and if_exists == "fail":
                raise SourceError(
                    f"{redact(url)}: table {table!r} already exists; pass if_exists='replace' to overwrite it."
                )
            df.to_sql(tmp, conn, index=False, if_exists="fail")
            quote = conn.dialect.identifier_preparer.quote
            if exists:
                conn.execute(sa.text(f"DROP TABLE {quote(table)}"))
            conn.execute(sa.text(f"ALTER TABLE {quote(tmp)} RENAME TO {quote(table)}"))
    except SQLAlchemyError as e:
        raise SourceError(
            f"{redact(url)}: writing table {table!r} failed and was rolled back, nothing was written "
            f"({type(e).__name__}: {str(getattr(e, 'orig', None) or e).strip().splitlines()[0]})."
        ) from None
    finally:
        engine.dispose()
