"""`moe-harness check`: a router from any code base, seen through a small adapter (adapter.py), run
through one check per bug class users keep reporting (classes/, registered in base.py), on the
targets of targets.py, with the table and report of report.py."""

from harness.check.adapter import Routed
from harness.check.base import CHECKS, Result, run_checks
from harness.routing.router import recomputing

__all__ = ["CHECKS", "Result", "Routed", "recomputing", "run_checks"]
