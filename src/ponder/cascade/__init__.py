"""Sample-level adaptivity across trained runs: cascades and routers (``ponder cascade``).

* :mod:`.outcomes`  per-example outcomes of each run (correct, confidences, input features)
* :mod:`.cost`      measured cost per example (FLOPs from the config and steps, wall time)
* :mod:`.rules`     the registry of deciding rules (``idk``, ``frugal``, ``router``)
* :mod:`.route`     applying a rule's scores and thresholds: who answers, at what cost
* :mod:`.calibrate` Learn-then-Test thresholds (binomial / Hoeffding-Bentkus p-values) and
                    the budgeted threshold search
* :mod:`.run`       the whole command: measure, fit, calibrate, evaluate, write
"""
