"""Evaluation at a site: the synthetic table comes in, only aggregate figures go out.

The synthetic table travels as Parquet bytes (typed columns survive; no pickle). The site scores it
against its own training rows and its own holdout rows (set aside before training, same seeded
split), and replies with ``SiteEvaluation.to_dict()``: scores, rates, binned histograms, suppressed
small cells, and counts of the training rows on a grid read off the synthetic table (one histogram per
column, one contingency table per column pair: the coordinator sums them to score the table against
the union of the sites, see ``evaluation.consortium``; they are not written into the report) — never
a row. These figures are not noised: the release gate reads them at the sites' own request; the
report lists the figures for the data protection officer to see what left.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from fedtab.schema import TableSchema


def frame_to_bytes(frame: pd.DataFrame) -> np.ndarray:
    """A typed table as Parquet bytes in a uint8 array (carried by any transport)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def bytes_to_frame(data: np.ndarray) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes()))


def evaluate_at_site(body: dict, *, train: pd.DataFrame, holdout: pd.DataFrame, schema: TableSchema,
                     seed: int, site: str) -> dict:
    """With the job's site column, the site scores the synthetic rows labelled with its own name."""
    from evaluation import evaluate_site

    synthetic = bytes_to_frame(body["synthetic"])
    result = evaluate_site(train, holdout, synthetic, schema, target=body.get("target"), seed=seed,
                           site_column=body["job"].get("site_column"), site=site)
    return {"evaluation": result.to_dict(), "rows": len(train)}
