"""Shared fixtures: test data paths, the CLI runner, and the PostgreSQL server (skip or, under CI, fail)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

TESTS = Path(__file__).parent
REPO = TESTS.parent
DATA = TESTS / "data"
BUNDLED = REPO / "fedtab" / "data"
PG_DEFAULT = "postgresql+psycopg:///fedtab_test"


@pytest.fixture
def cli():
    """Invoke the fedtab CLI in-process; returns click's Result (output holds stdout and stderr)."""
    from fedtab.cli import app

    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return invoke


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a reachable PostgreSQL database; skips when none answers, fails instead when CI is set."""
    url = os.environ.get("FEDTAB_PG_URL", PG_DEFAULT)
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as e:  # any failure to reach the server means "no server" here
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        msg = (f"no PostgreSQL server answers at {url} ({type(e).__name__}: {reason}); "
               "set FEDTAB_PG_URL or run .ci/run, which starts one")
        if os.environ.get("CI"):
            pytest.fail(msg + " [CI is set, so this is a failure, not a skip]")
        pytest.skip(msg)
    return url


@pytest.fixture
def pg_table(pg_url):
    """A fresh table name in the PostgreSQL test database, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()


# The sites' rules refuse a job without DP unless a site opts in (fedtab.SitePolicy): tests of
# non-DP behaviour opt in explicitly, as a site's operator would.
def non_dp_policy():
    from fedtab.privacy.book import SitePolicy

    return SitePolicy(allow_non_dp=True)
