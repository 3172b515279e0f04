"""The report: the paper's tables, figures and claims check, from the pipeline's metrics files.

    run = load_metrics("metrics", models, setups, methods)   # validates every file first
    files = build_report({0: run}, profile="embedded")       # {relative path: bytes}; {seed: run}
"""

from weaving.report.build import build_report
from weaving.report.load import (
                                 METHODS,
                                 POOL_OVERS,
                                 POOLINGS,
                                 SETUPS,
                                 MetricsError,
                                 RunMetrics,
                                 WeaveMetrics,
                                 load_metrics,
)

__all__ = ["build_report", "load_metrics", "MetricsError", "RunMetrics", "WeaveMetrics",
           "METHODS", "SETUPS", "POOLINGS", "POOL_OVERS"]
