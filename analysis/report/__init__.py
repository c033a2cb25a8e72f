"""The report: every figure and table of the paper's Section 7 / Appendix H, from the shipped checkpoints.

``python -m analysis.report`` computes (:func:`compute_report`), draws
(:mod:`analysis.report.figures`) and writes ``figures/`` with a README that
sets each figure beside the paper's number (:func:`write_report`).
"""

from analysis.report.compute import ReportConfig, ReportData, compute_report
from analysis.report.write import write_report

__all__ = ["ReportConfig", "ReportData", "compute_report", "write_report"]
