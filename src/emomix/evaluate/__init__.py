"""Evaluation: metrics, routing/gate analysis, figures, the run report and run comparison.

Modules: :mod:`~emomix.evaluate.metrics` (UA, WA, F1, confusion, summaries with CIs),
:mod:`~emomix.evaluate.routing` (router and gate shares from the ``aux_*`` prediction columns),
:mod:`~emomix.evaluate.plots` (PNG figures), :mod:`~emomix.evaluate.report` (``write_report``),
:mod:`~emomix.evaluate.compare` (``compare_runs``); the ``evaluate`` and ``compare`` commands are
in :mod:`emomix.cli.evaluate`. Imports are left to the submodules so that importing the package
stays cheap.
"""
