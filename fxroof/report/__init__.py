"""Stage 5, the report: frozen rows and totals, and its views (tables, plot, checks)."""
from fxroof.report.records import KernelRow, ModeSummary, NodeRow, Report

__all__ = ["KernelRow", "ModeSummary", "NodeRow", "Report"]
