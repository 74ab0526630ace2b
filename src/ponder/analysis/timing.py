"""Decision timing: do static cues or execution state explain how many steps a token gets?

A linear model (scikit-learn) predicts ``steps`` from two groups of per-token features:

* **static** — known before any computation: the token's position, the input size (last
  scored position + 1 of its example), the token's identity (one-hot), the example's size
  knobs (``param_*``) and every ``feat_*`` that is constant within each example (e.g. ``n``);
* **execution** — the task's remaining ``feat_*`` features, which describe the state of the
  algorithm at that token (e.g. ``frontier_size``, ``dfs_depth``).

When the records' task is a registered family, its declaration decides instead
(``Task.execution_features``; every other ``feat_*`` is static) and its
``Task.label_features`` (properties of the answer, e.g. ``unseen_label``) are left out of
every model: a probe must not be handed the label.

Besides the linear model, a nonlinear probe (``HistGradientBoostingRegressor``) per group,
fitted on 75% of the *examples* and scored on the rest (tokens of one example never on both
sides), with bootstrap CIs over the held-out examples for each group's R² and for the
difference execution − static; ``explained_by`` says which group wins (its CI excludes 0).

Per split it reports the held-out R² of static-only, execution-only and both-groups models,
and the permutation importance of each group and each feature: the drop of the both-groups
model's held-out R² when the group's (feature's) columns are shuffled together — the
procedure of ``sklearn.inspection.permutation_importance``, applied jointly to the several
encoded columns a token identity or a group expands into. Encoding, fitting and scoring use
scikit-learn (``SimpleImputer``, ``StandardScaler``, ``OneHotEncoder``, ``LinearRegression``,
``r2_score``). An early decision (made from the prelude)
can only use static cues; an online one can follow execution state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ponder.eval.records import FEATURE_PREFIX, PARAM_PREFIX

MAX_ROWS = 20_000          # rows used to fit (subsampled, seeded)
MAX_IMPORTANCE_ROWS = 5_000  # held-out rows used for permutation importance
N_REPEATS = 5
MAX_TOKEN_CATEGORIES = 50  # one-hot columns for token identity (rarer tokens pooled)
MIN_R2_FOR_SHARE = 0.05    # below this held-out R², which group "explains" the steps is noise
MAX_NONLINEAR_ROWS = 8_000  # rows for the gradient-boosting probe (subsampled by example)
N_BOOTSTRAP = 200           # resamples of the held-out examples for the CIs
CI = (2.5, 97.5)


def declared_groups(task: str | None) -> tuple[frozenset[str], frozenset[str]] | None:
    """``(execution, label)`` feature names a registered task family declares; None when the
    task is not registered (synthetic records): the per-example-constancy rule decides."""
    from ponder.errors import PonderError
    from ponder.tasks.registry import task_class

    if not task:
        return None
    try:
        cls = task_class(task)
    except PonderError:
        return None
    return frozenset(cls.execution_features), frozenset(cls.label_features)


def static_feature_names(records: pd.DataFrame) -> set[str]:
    """``feat_*`` columns constant within every example of ``records`` (all splits)."""
    names = set()
    for col in records.columns:
        if col.startswith(FEATURE_PREFIX) and col != "feat_position":
            per_example = records.groupby(["split", "example"])[col].nunique(dropna=False)
            if bool((per_example <= 1).all()):
                names.add(col)
    return names


def feature_groups(frame: pd.DataFrame, *, groups_from: pd.DataFrame | None = None,
                   declared: tuple[frozenset[str], frozenset[str]] | None = None
                   ) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """Build the design table and split its columns into groups.

    ``groups_from`` (default ``frame``): the records that decide which ``feat_*`` are
    per-example (static); pass every split of the run so that a feature is in the same group
    in every split. Returns ``(table, static_columns, execution_columns, categorical_columns)``;
    ``table`` has one row per record (same index) and plain column names (prefixes stripped).
    ``declared``: ``(execution, label)`` names of the task (:func:`declared_groups`); then
    those decide the groups and label features are dropped.
    """
    per_example = (set() if declared is not None else
                   static_feature_names(frame if groups_from is None else groups_from))
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
        if declared is not None and name in declared[1]:
            continue   # a property of the label: never a predictor
        values = pd.to_numeric(frame[col], errors="coerce").astype(float)
        table[name] = values
        if declared is not None:
            (execution if name in declared[0] else static).append(name)
        else:
            # A feature constant within every example describes the example, not the execution.
            (static if col in per_example else execution).append(name)
    return table, static, execution, categorical


@dataclass
class Design:
    """Encoded features: ``x_train [n_train, k]``, ``x_test [n_test, k]`` and which encoded
    columns each raw feature became (one-hot tokens → many, a numeric feature with missing
    values → value + missing indicator)."""

    x_train: np.ndarray
    x_test: np.ndarray
    columns: dict[str, list[int]]

    def cols(self, features: list[str]) -> list[int]:
        return [i for f in features for i in self.columns[f]]


def encode(train: pd.DataFrame, test: pd.DataFrame, categorical: list[str]) -> Design:
    """Fit the encoders on ``train`` (impute + standardise numbers, one-hot categories)."""
    blocks_train, blocks_test, columns, width = [], [], {}, 0
    numeric = [c for c in train.columns if c not in categorical]
    if numeric:
        imputer = SimpleImputer(strategy="mean", add_indicator=True, keep_empty_features=True)
        scaler = StandardScaler()
        blocks_train.append(scaler.fit_transform(imputer.fit_transform(train[numeric])))
        blocks_test.append(scaler.transform(imputer.transform(test[numeric])))
        columns = {c: [i] for i, c in enumerate(numeric)}
        flagged = imputer.indicator_.features_ if imputer.indicator_ is not None else []
        for j, feature in enumerate(flagged):
            columns[numeric[feature]].append(len(numeric) + j)
        width = blocks_train[0].shape[1]
    for c in categorical:
        encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=MAX_TOKEN_CATEGORIES,
                                sparse_output=False)
        block = encoder.fit_transform(train[[c]])
        blocks_train.append(block)
        blocks_test.append(encoder.transform(test[[c]]))
        columns[c] = list(range(width, width + block.shape[1]))
        width += block.shape[1]
    return Design(np.hstack(blocks_train), np.hstack(blocks_test), columns)


def _fit_r2(design: Design, features: list[str], y_train, y_test):
    """(model, held-out R²) of a linear model on ``features``; (None, None) without features."""
    if not features:
        return None, None
    cols = design.cols(features)
    model = LinearRegression().fit(design.x_train[:, cols], y_train)
    return model, float(r2_score(y_test, model.predict(design.x_test[:, cols])))


def permutation_drop(x: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float,
                     cols: list[int], rng: np.random.Generator, n_repeats: int = N_REPEATS) -> np.ndarray:
    """R² drops ``[n_repeats]`` when the rows of columns ``cols`` are shuffled together.

    The same procedure as ``sklearn.inspection.permutation_importance`` (scoring "r2"), but one
    permutation is applied jointly to every encoded column of a feature or group; for a
    linear model only the permuted columns' contribution changes, so it is one mat-vec.
    """
    prediction = x @ coef + intercept
    base = r2_score(y, prediction)
    part = x[:, cols] @ coef[cols]
    drops = np.empty(n_repeats)
    for r in range(n_repeats):
        order = rng.permutation(len(x))
        drops[r] = base - r2_score(y, prediction - part + part[order])
    return drops


def _bootstrap_r2(y: np.ndarray, predictions: dict[str, np.ndarray], groups: np.ndarray,
                  rng: np.random.Generator, n_boot: int) -> dict[str, np.ndarray]:
    """R² ``[n_boot]`` of each prediction on resamples of the held-out *examples* (``groups``:
    the example key of each row): the unit that was drawn independently is the example."""
    keys, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(len(keys))]
    out = {name: np.full(n_boot, np.nan) for name in predictions}
    for b in range(n_boot):
        pick = np.concatenate([rows_of[k] for k in rng.integers(0, len(keys), size=len(keys))])
        yb = y[pick]
        if np.all(yb == yb[0]):
            continue
        for name, pred in predictions.items():
            out[name][b] = r2_score(yb, pred[pick])
    return out


def _ci(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    return None if len(values) == 0 else [float(v) for v in np.percentile(values, CI)]


def nonlinear_probe(table: pd.DataFrame, y: np.ndarray, examples: np.ndarray, *,
                    static: list[str], execution: list[str], categorical: list[str],
                    seed: int = 0, n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Held-out R² of gradient boosting on the static, execution and both groups, with
    bootstrap CIs over held-out examples; ``explained_by``: "execution" / "static" when the
    CI of R²(execution) − R²(static) lies above / below 0, "undecided" otherwise, "nothing"
    when even both groups together explain < ``MIN_R2_FOR_SHARE``.

    ``table [n_rows, features]``, ``y [n_rows]`` steps, ``examples [n_rows]`` example keys.
    """
    rng = np.random.default_rng(seed)
    if len(table) > MAX_NONLINEAR_ROWS:  # whole examples, so that the split stays by example
        keys = np.unique(examples)
        rng.shuffle(keys)
        counts = pd.Series(examples).value_counts()
        keep_keys = keys[np.cumsum(counts.loc[keys].to_numpy()) <= MAX_NONLINEAR_ROWS]
        keep = np.isin(examples, keep_keys)
        table, y, examples = table[keep], y[keep], examples[keep]
    out: dict[str, Any] = {"model": "HistGradientBoostingRegressor", "r2": None, "ci": None,
                           "execution_minus_static": None, "explained_by": None}
    if len(np.unique(examples)) < 8:
        out["note"] = "too few examples for a split by example"
        return out
    split = GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=seed)
    train_idx, test_idx = next(split.split(table, y, groups=examples))
    y_train, y_test = y[train_idx], y[test_idx]
    if np.all(y_test == y_test[0]) or np.all(y_train == y_train[0]):
        out["note"] = "held-out (or fitted) steps are constant: R² undefined"
        return out
    design = encode(table.iloc[train_idx], table.iloc[test_idx], categorical)
    predictions = {}
    for name, features in (("static", static), ("execution", execution), ("both", static + execution)):
        if not features:
            continue
        cols = design.cols(features)
        model = HistGradientBoostingRegressor(max_iter=150, learning_rate=0.1, random_state=seed)
        model.fit(design.x_train[:, cols], y_train)
        predictions[name] = model.predict(design.x_test[:, cols])
    out["r2"] = {name: float(r2_score(y_test, p)) for name, p in predictions.items()}
    boots = _bootstrap_r2(y_test, predictions, examples[test_idx], rng, n_boot)
    out["ci"] = {name: _ci(v) for name, v in boots.items()}
    out["n_fit"], out["n_heldout"] = int(len(train_idx)), int(len(test_idx))
    out["n_heldout_examples"] = int(len(np.unique(examples[test_idx])))
    if "static" in predictions and "execution" in predictions:
        diff = boots["execution"] - boots["static"]
        ci = _ci(diff)
        out["execution_minus_static"] = {"estimate": out["r2"]["execution"] - out["r2"]["static"],
                                         "ci": ci}
        if out["r2"]["both"] < MIN_R2_FOR_SHARE:
            out["explained_by"] = "nothing"
        elif ci is not None and ci[0] > 0:
            out["explained_by"] = "execution"
        elif ci is not None and ci[1] < 0:
            out["explained_by"] = "static"
        else:
            out["explained_by"] = "undecided"
    return out


def analyse_split(frame: pd.DataFrame, *, seed: int = 0,
                  groups_from: pd.DataFrame | None = None,
                  declared: tuple[frozenset[str], frozenset[str]] | None = None,
                  n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Decision-timing numbers for one split's records (groups decided on ``groups_from``,
    or by the task's ``declared`` groups)."""
    table, static, execution, categorical = feature_groups(frame, groups_from=groups_from,
                                                           declared=declared)
    out: dict[str, Any] = {"static_features": static, "execution_features": execution,
                           "groups_declared_by_task": declared is not None,
                           "n_rows": int(len(frame)), "r2": None, "r2_partition": None,
                           "group_importance": None,
                           "feature_importance": [], "static_share": None, "nonlinear": None}
    y = frame["steps"].to_numpy(dtype=float)
    if len(frame) < 20 or np.all(y == y[0]):
        out["note"] = "steps are constant (or too few tokens): nothing to explain"
        return out
    examples = (frame["split"].astype(str) + "/" + frame["example"].astype(str)).to_numpy()
    out["nonlinear"] = nonlinear_probe(table, y, examples, static=static, execution=execution,
                                       categorical=categorical, seed=seed, n_boot=n_boot)
    rng = np.random.default_rng(seed)
    if len(table) > MAX_ROWS:
        keep = np.sort(rng.choice(len(table), size=MAX_ROWS, replace=False))
        table, y = table.iloc[keep], y[keep]
    x_train, x_test, y_train, y_test = train_test_split(table, y, test_size=0.25, random_state=seed)
    if np.all(y_test == y_test[0]):
        out["note"] = "held-out steps are constant: R² undefined"
        return out
    both_cols = static + execution
    design = encode(x_train, x_test, categorical)
    _, r2_static = _fit_r2(design, static, y_train, y_test)
    _, r2_exec = _fit_r2(design, execution, y_train, y_test)
    model, r2_both = _fit_r2(design, both_cols, y_train, y_test)
    out["r2"] = {"static": r2_static, "execution": r2_exec, "both": r2_both}
    if r2_static is not None and r2_exec is not None:
        # Variance partition: what only one group explains, and what either explains alone.
        # Robust where permutation importance is not: when a feature of one group is a
        # function of the other group, the model splits credit between them arbitrarily.
        out["r2_partition"] = {"static_unique": r2_both - r2_exec,
                               "execution_unique": r2_both - r2_static,
                               "shared": r2_static + r2_exec - r2_both}
    out["n_fit"] = int(len(x_train))
    out["n_heldout"] = int(len(x_test))
    # importance on (at most MAX_IMPORTANCE_ROWS) held-out rows of the both-groups model
    x_imp, y_imp = design.x_test[:, design.cols(both_cols)], y_test
    if len(x_imp) > MAX_IMPORTANCE_ROWS:
        pick = rng.choice(len(x_imp), size=MAX_IMPORTANCE_ROWS, replace=False)
        x_imp, y_imp = x_imp[pick], y_imp[pick]
    local = Design(x_imp, x_imp, {})
    offset = 0
    for f in both_cols:  # column indices inside the both-groups matrix
        local.columns[f] = list(range(offset, offset + len(design.columns[f])))
        offset += len(design.columns[f])
    coef, intercept = model.coef_, float(model.intercept_)

    def importance(features: list[str]) -> dict[str, float]:
        drops = permutation_drop(x_imp, y_imp, coef, intercept, local.cols(features), rng)
        return {"mean": float(drops.mean()), "std": float(drops.std())}

    out["group_importance"] = {"static": importance(static) if static else None,
                               "execution": importance(execution) if execution else None}
    ranked = sorted(((f, importance([f])) for f in both_cols), key=lambda t: -t[1]["mean"])
    out["feature_importance"] = [
        {"feature": f, "group": "static" if f in static else "execution",
         "importance": imp["mean"], "std": imp["std"]} for f, imp in ranked]
    if r2_both is None or r2_both < MIN_R2_FOR_SHARE:
        out["note"] = f"the linear model explains < {MIN_R2_FOR_SHARE:.0%} of the steps' variance"
        return out
    s_imp = max(out["group_importance"]["static"]["mean"], 0.0)
    e_imp = max(out["group_importance"]["execution"]["mean"], 0.0) if execution else 0.0
    out["static_share"] = float(s_imp / (s_imp + e_imp)) if s_imp + e_imp > 0 else None
    return out
