"""Analysis of eval records: where did the compute go, and does it generalise?

    run = ponder.analysis.load(run_dir)             # records, summaries, run info (pandas)
    result = ponder.analysis.analyze_run(run_dir)   # → RUN_DIR/analysis.json + figures/
    ponder.analysis.write_report([run_a, run_b], "report.html")

Note: the name ``load`` is the function; import the module's other names with
``from ponder.analysis.load import RunData``. What every number means: docs/analysis.md.
"""

from ponder._exports import lazy_exports
from ponder.analysis.load import RunData, load

# Lazy: scikit-learn and matplotlib load only when an analysis actually runs.
_HOMES = {"analyze_run": "ponder.analysis.analyze", "write_report": "ponder.analysis.report"}
__all__ = ["RunData", "load", *sorted(_HOMES)]
__getattr__ = lazy_exports(__name__, _HOMES)
