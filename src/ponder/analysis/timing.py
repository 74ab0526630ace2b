"""Decision timing: do static cues or execution state explain how many steps a token gets?

A linear model (scikit-learn) predicts ``steps`` from two groups of per-token features:

* **static** — known before any computation: the token's position, the input size (last
  scored position + 1 of its example), the token's identity (one-hot), the example's size
  knobs (``param_*``) and every ``feat_*`` that is constant within each example (e.g. ``n``);
* **execution** — the task's remaining ``feat_*`` features, which describe the state of the
  algorithm at that token (e.g. ``frontier_size``, ``dfs_depth``).

Per split it reports the held-out R² of static-only, execution-only and both-groups models,
and the permutation importance of each group (drop of held-out R² of the both-groups model
when all the group's columns are shuffled together) and of each feature
(``sklearn.inspection.permutation_importance``). An early decision (made from the prelude)
can only use static cues; an online one can follow execution state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ponder.eval.records import FEATURE_PREFIX, PARAM_PREFIX

MAX_ROWS = 20_000          # rows used to fit (subsampled, seeded)
MAX_IMPORTANCE_ROWS = 5_000  # held-out rows used for permutation importance
N_REPEATS = 5
MAX_TOKEN_CATEGORIES = 50  # one-hot columns for token identity (rarer tokens pooled)
MIN_R2_FOR_SHARE = 0.05    # below this held-out R², which group "explains" the steps is noise


def feature_groups(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """Build the design table and split its columns into groups.

    Returns ``(table, static_columns, execution_columns, categorical_columns)``; ``table`` has
    one row per record (same index) and plain column names (prefixes stripped).
    """
    table = pd.DataFrame(index=frame.index)
    static, execution, categorical = [], [], []
    position = frame["feat_position"] if "feat_position" in frame else frame["position"]
    table["position"] = position.astype(float)
    table["input_size"] = frame.groupby(["split", "example"])["position"].transform("max").astype(float) + 1
    table["token"] = frame["token"].astype(str)
    static += ["position", "input_size", "token"]
    categorical.append("token")
    for col in frame.columns:
        if col.startswith(PARAM_PREFIX):
            name = "param:" + col[len(PARAM_PREFIX):]
            if pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col]):
                table[name] = frame[col].astype(float)
            else:
                table[name] = frame[col].astype(str)
                categorical.append(name)
            static.append(name)
    for col in frame.columns:
        if not col.startswith(FEATURE_PREFIX) or col == "feat_position":
            continue
        name = col[len(FEATURE_PREFIX):]
        values = pd.to_numeric(frame[col], errors="coerce").astype(float)
        table[name] = values
        # A feature constant within every example describes the example, not the execution.
        per_example = values.groupby([frame["split"], frame["example"]]).nunique(dropna=False)
        (static if bool((per_example <= 1).all()) else execution).append(name)
    return table, static, execution, categorical


def _model(columns: list[str], categorical: list[str]) -> Pipeline:
    cats = [c for c in columns if c in categorical]
    nums = [c for c in columns if c not in categorical]
    transformers = []
    if nums:
        transformers.append(("num", make_pipeline(
            SimpleImputer(strategy="mean", add_indicator=True, keep_empty_features=True),
            StandardScaler()), nums))
    if cats:
        transformers.append(("cat", OneHotEncoder(handle_unknown="infrequent_if_exist",
                                                  max_categories=MAX_TOKEN_CATEGORIES,
                                                  sparse_output=False), cats))
    return Pipeline([("features", ColumnTransformer(transformers)), ("linear", LinearRegression())])


def _fit_r2(columns: list[str], categorical: list[str], x_train, y_train, x_test, y_test):
    if not columns:
        return None, None
    model = _model(columns, categorical).fit(x_train[columns], y_train)
    return model, float(r2_score(y_test, model.predict(x_test[columns])))


def _group_importance(model, columns, group, x, y, base, rng) -> dict[str, float]:
    drops = []
    for _ in range(N_REPEATS):
        shuffled = x[columns].copy()
        order = rng.permutation(len(x))
        for col in group:  # one permutation for the whole group keeps its columns together
            shuffled[col] = x[col].to_numpy()[order]
        drops.append(base - r2_score(y, model.predict(shuffled)))
    return {"mean": float(np.mean(drops)), "std": float(np.std(drops))}


def analyse_split(frame: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """Decision-timing numbers for one split's records."""
    table, static, execution, categorical = feature_groups(frame)
    out: dict[str, Any] = {"static_features": static, "execution_features": execution,
                           "n_rows": int(len(frame)), "r2": None, "group_importance": None,
                           "feature_importance": [], "static_share": None}
    y = frame["steps"].to_numpy(dtype=float)
    if len(frame) < 20 or np.all(y == y[0]):
        out["note"] = "steps are constant (or too few tokens): nothing to explain"
        return out
    rng = np.random.default_rng(seed)
    if len(table) > MAX_ROWS:
        keep = np.sort(rng.choice(len(table), size=MAX_ROWS, replace=False))
        table, y = table.iloc[keep], y[keep]
    x_train, x_test, y_train, y_test = train_test_split(table, y, test_size=0.25, random_state=seed)
    if np.all(y_test == y_test[0]):
        out["note"] = "held-out steps are constant: R² undefined"
        return out
    both_cols = static + execution
    _, r2_static = _fit_r2(static, categorical, x_train, y_train, x_test, y_test)
    _, r2_exec = _fit_r2(execution, categorical, x_train, y_train, x_test, y_test)
    model, r2_both = _fit_r2(both_cols, categorical, x_train, y_train, x_test, y_test)
    out["r2"] = {"static": r2_static, "execution": r2_exec, "both": r2_both}
    out["n_fit"] = int(len(x_train))
    out["n_heldout"] = int(len(x_test))
    x_imp, y_imp = x_test[both_cols], y_test
    if len(x_imp) > MAX_IMPORTANCE_ROWS:
        pick = rng.choice(len(x_imp), size=MAX_IMPORTANCE_ROWS, replace=False)
        x_imp, y_imp = x_imp.iloc[pick], y_imp[pick]
    base = float(r2_score(y_imp, model.predict(x_imp)))
    groups = {"static": static, "execution": execution}
    out["group_importance"] = {name: (_group_importance(model, both_cols, cols, x_imp, y_imp, base, rng)
                                      if cols else None) for name, cols in groups.items()}
    result = permutation_importance(model, x_imp, y_imp, scoring="r2", n_repeats=N_REPEATS,
                                    random_state=seed)
    ranked = sorted(zip(both_cols, result.importances_mean, result.importances_std),
                    key=lambda t: -t[1])
    out["feature_importance"] = [
        {"feature": f, "group": "static" if f in static else "execution",
         "importance": float(m), "std": float(s)} for f, m, s in ranked]
    if r2_both is None or r2_both < MIN_R2_FOR_SHARE:
        out["note"] = f"the linear model explains < {MIN_R2_FOR_SHARE:.0%} of the steps' variance"
        return out
    s_imp = max(out["group_importance"]["static"]["mean"], 0.0)
    e_imp = max(out["group_importance"]["execution"]["mean"], 0.0) if execution else 0.0
    out["static_share"] = float(s_imp / (s_imp + e_imp)) if s_imp + e_imp > 0 else None
    return out
