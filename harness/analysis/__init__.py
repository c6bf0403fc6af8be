"""Analysis: what a results folder's tables say (statistics, verdicts, sequential seeds, the
bias-rate transfer law, figures, the report). It reads tables only: nothing here trains."""
