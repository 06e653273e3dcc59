"""Evaluation and reporting: metrics, aggregation over sweeps, tables, statistics, figures and the
decision-level weight searches. Works offline from saved run directories (no GPU, no torch)."""
from .metrics import evaluate_predictions, evaluate_probs, main_score, task_metrics
from .predictions import branches, combine, read_predictions, task_classes, targets

__all__ = ["task_metrics", "evaluate_predictions", "evaluate_probs", "main_score", "read_predictions", "combine",
           "branches", "task_classes", "targets"]
