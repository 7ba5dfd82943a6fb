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


# A release policy every table passes. A site never applies privacy thresholds looser than its own
# (SitePolicy.release_policy), and once a table of a model fails a privacy check at a site it evaluates no
# other table of that model: tests that evaluate one model several times, and are not about the gate,
# give the sites and the coordinator this policy (under the shipped one a chance refusal, which the gate
# allows up to family_alpha = 1 time in 10, would stop the later evaluations).
LENIENT_POLICY = (
    "[fidelity]\nmin_quality = 0.0\nmax_detection_auc = 1.0\n"
    "[disclosure]\ndcr_share_min = 0.0\ndcr_share_max = 1.0\nmax_exact_copy_rate = 1.0\nmax_mia_auc = 1.0\n"
    "max_singling_out_risk = 1.0\nmax_linkability_risk = 1.0\nmax_inference_risk = 1.0\nmax_near_copy_excess = 1.0\n"
    "[privacy]\nrequire_dp = false\nmax_epsilon_per_site = 1000.0\n")
_LENIENT_FILE: list[str] = []


def lenient_policy_file() -> str:
    """The path of a TOML file holding ``LENIENT_POLICY`` (written once per test session)."""
    if not _LENIENT_FILE:
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="fedtab-lenient-")
        atexit.register(shutil.rmtree, folder, True)
        path = Path(folder) / "lenient_policy.toml"
        path.write_text(LENIENT_POLICY)
        _LENIENT_FILE.append(str(path))
    return _LENIENT_FILE[0]


def lenient_site_policy(**rules):
    """A site's own rules with ``LENIENT_POLICY`` as its release policy."""
    from fedtab.privacy.book import SitePolicy

    return SitePolicy(release_policy=lenient_policy_file(), **rules)


# The sites' rules refuse a job without DP unless a site opts in (fedtab.SitePolicy): tests of
# non-DP behaviour opt in explicitly, as a site's operator would.
def non_dp_policy():
    return lenient_site_policy(allow_non_dp=True)
