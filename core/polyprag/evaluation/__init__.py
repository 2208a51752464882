"""Evaluation on QA benchmarks: metrics, the methods and their controls, the runner and its report."""
from .config import DEFAULT_METHODS, METHODS, EvalConfig, Method
from .metrics import accuracy, exact_match, f1_score, normalize_answer, paired_bootstrap, recall_at_k
from .report import Comparison, EvalReport, MethodResult, write_report
from .runner import FixedRetriever, compare, load_slice, routing_control, run_evaluation, settings

__all__ = ["Comparison", "DEFAULT_METHODS", "EvalConfig", "EvalReport", "FixedRetriever", "METHODS", "Method",
           "MethodResult", "accuracy", "compare", "exact_match", "f1_score", "load_slice", "normalize_answer",
           "paired_bootstrap", "recall_at_k", "routing_control", "run_evaluation", "settings", "write_report"]
