"""Write per-token records to Parquet atomically, with the ``ponder_run`` metadata."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ponder.eval.records import (FEATURE_PREFIX, FIXED_COLUMNS, OPTIONAL_COLUMNS, PARAM_PREFIX,
                                 RECORDS_VERSION)

_FIXED_TYPES = {
    "example": pa.int64(), "split": pa.string(), "position": pa.int64(), "token": pa.string(),
    "target": pa.string(), "prediction": pa.string(), "correct": pa.bool_(),
    "complexity": pa.int64(), "steps": pa.int64(), "max_steps": pa.int64(),
    "seen_label": pa.bool_(), "seq_correct": pa.bool_(),
}


def records_table(cols: dict[str, list], meta: dict[str, Any]) -> pa.Table:
    """A table with the fixed columns first (typed), then ``param_*`` and ``feat_*``."""
    arrays, names = [], []
    for name in FIXED_COLUMNS:
        arrays.append(pa.array(cols[name], type=_FIXED_TYPES[name]))
        names.append(name)
    for name in OPTIONAL_COLUMNS:
        if name in cols:
            arrays.append(pa.array(cols[name], type=pa.float64()))
            names.append(name)
    for name in sorted(k for k in cols if k.startswith(PARAM_PREFIX)):
        arrays.append(pa.array(cols[name]))  # type inferred (ints, strings ...)
        names.append(name)
    for name in sorted(k for k in cols if k.startswith(FEATURE_PREFIX)):
        arrays.append(pa.array(cols[name], type=pa.float64()))
        names.append(name)
    metadata = {"ponder_records_version": str(RECORDS_VERSION), "ponder_run": json.dumps(meta)}
    return pa.Table.from_arrays(arrays, names=names).replace_schema_metadata(metadata)


def write_records(path: Path, cols: dict[str, list], meta: dict[str, Any]) -> None:
    table = records_table(cols, meta)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; records are meant to be shared
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
