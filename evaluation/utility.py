"""Machine-learning utility: train on synthetic, test on real (TSTR) against train on real, test on real (TRTR).

The same gradient-boosted model (``HistGradientBoosting*``: fast, native missing values and categories)
is fitted once on the real training rows and once on the synthetic rows, and both are scored on the
site's real holdout rows, which neither saw. Classification (categorical or boolean target) is scored by
ROC-AUC (binary, or one-vs-rest macro average over the classes present in the holdout); regression
(numerical target) by R². A synthetic table whose target has one class only scores 0.5 (a constant guess).

Called directly (not through ``evaluate_site``), wrap calls in ``threadpoolctl.threadpool_limits(1)`` on
busy machines: OpenMP workers that share busy cores spin (see ``EvaluationOptions.n_threads``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import r2_score, roc_auc_score

from evaluation._tables import Kinds, OrdinalCodes, subsample


@dataclass(frozen=True)
class UtilityResult:
    target: str
    task: str  # "binary", "multiclass" or "regression"
    metric: str  # "roc_auc", "roc_auc_ovr_macro" or "r2"
    real_score: float  # TRTR
    synthetic_score: float  # TSTR
    n_train_real: int
    n_train_synthetic: int
    n_test: int

    @property
    def ratio(self) -> float | None:
        """TSTR / TRTR measured above chance (0.5 for AUC, 0 for R²): 1 = as useful as the real rows."""
        chance = 0.0 if self.metric == "r2" else 0.5
        denom = self.real_score - chance
        return None if denom <= 1e-9 else max(0.0, (self.synthetic_score - chance) / denom)

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def _auc(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Binary AUC, or one-vs-rest macro AUC over the test classes (missing model classes score 0)."""
    present = [c for c in np.unique(y_true)]
    col = {c: i for i, c in enumerate(classes)}

    def score_of(c):
        return proba[:, col[c]] if c in col else np.zeros(len(y_true))

    if len(present) < 2:
        return float("nan")
    if len(present) == 2 and len(classes) <= 2:
        pos = present[1]
        return float(roc_auc_score(y_true == pos, score_of(pos)))
    return float(np.mean([roc_auc_score(y_true == c, score_of(c)) for c in present]))


def _fit_score(train: pd.DataFrame, test: pd.DataFrame, target: str, task: str, features: list[str],
               codes: OrdinalCodes, seed: int) -> float:
    # A feature with no observed value in this training table (a site that never measures it, as
    # Switzerland's cholesterol) carries no signal and makes the gradient boosting's binning fail.
    features = [f for f in features if train[f].notna().any()]
    x_tr, x_te = codes.transform(train, features), codes.transform(test, features)
    y_tr, y_te = train[target].to_numpy(), test[target].to_numpy()
    mask = codes.categorical_mask(features)
    if task == "regression":
        y_tr, y_te = y_tr.astype("float64"), y_te.astype("float64")
        if len(train) < 2 or np.nanstd(y_tr) == 0:
            pred = np.full(len(y_te), np.mean(y_tr) if len(y_tr) else 0.0)
        else:
            model = HistGradientBoostingRegressor(max_iter=100, categorical_features=mask, random_state=seed)
            pred = model.fit(x_tr, y_tr).predict(x_te)
        return float(r2_score(y_te, pred))
    classes = np.unique(y_tr)
    if len(classes) < 2:
        return 0.5
    model = HistGradientBoostingClassifier(max_iter=100, categorical_features=mask, random_state=seed)
    model.fit(x_tr, y_tr)
    return _auc(y_te, model.predict_proba(x_te), model.classes_)


def evaluate_utility(
    real_train: pd.DataFrame,
    real_holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    kinds: Kinds,
    target: str,
    *,
    seed: int = 0,
    max_rows: int = 20000,
) -> UtilityResult:
    rng = np.random.default_rng(seed)
    frames = [f[f[target].notna()] for f in (real_train, real_holdout, synthetic)]
    tr, te, sy = (subsample(f, max_rows, rng) for f in frames)
    features = [c for c in kinds.columns if c != target]
    if target in kinds.numerical:
        task, metric = "regression", "r2"
    else:
        n_classes = len(pd.concat([tr[target], te[target]]).unique())
        task = "binary" if n_classes <= 2 else "multiclass"
        metric = "roc_auc" if task == "binary" else "roc_auc_ovr_macro"
    codes = OrdinalCodes(Kinds(numerical=(), categorical=tuple(c for c in kinds.categorical if c != target)))
    codes.fit(tr, sy)
    return UtilityResult(
        target=target, task=task, metric=metric,
        real_score=_fit_score(tr, te, target, task, features, codes, seed),
        synthetic_score=_fit_score(sy, te, target, task, features, codes, seed),
        n_train_real=len(tr), n_train_synthetic=len(sy), n_test=len(te),
    )
