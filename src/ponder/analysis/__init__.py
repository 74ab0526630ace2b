"""Analysis of eval records: where did the compute go, and does it generalise?

    run = ponder.analysis.load(run_dir)             # records, summaries, run info (pandas)
    result = ponder.analysis.analyze_run(run_dir)   # → RUN_DIR/analysis.json + figures/
    ponder.analysis.write_report([run_a, run_b], "report.html")

Note: the name ``load`` is the function; import the module's other names with
``from ponder.analysis.load import RunData``. What every number means: docs/analysis.md.
"""

from ponder.analysis.load import RunData, load

__all__ = ["RunData", "load", "analyze_run", "write_report"]


def __getattr__(name: str):
    # Lazy: scikit-learn and matplotlib load only when an analysis actually runs.
    if name == "analyze_run":
        from ponder.analysis.analyze import analyze_run
        return analyze_run
    if name == "write_report":
        from ponder.analysis.report import write_report
        return write_report
    raise AttributeError(f"module 'ponder.analysis' has no attribute {name!r}")
