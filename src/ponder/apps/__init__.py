"""Apps: the programs built on the public library — ``ponder demo``, ``ponder reproduce``,
``ponder bench`` and the report screenshot tool (``python -m ponder.apps.screenshot``).

An app imports only what a package exports in its ``__all__`` (``ponder.train``,
``ponder.eval``, ``ponder.analysis``, ``ponder.tasks``, ``ponder.benchmarking`` ...), never a
package's inner modules, so the library can be reorganised without breaking them and a user's
own program can do anything an app does. ``tests/test_apps_boundary.py`` checks this; the
library never imports an app (only ``ponder.cli`` lists them as sub-commands).
"""
