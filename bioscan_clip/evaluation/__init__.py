"""Evaluation: the paper's retrieval protocol and tables, the DNA identifiers compared with species held out,
reports (plots, model card) and the installed ``taxonomic_retrieval`` metric."""

from .protocol import Evaluation, evaluate, evaluate_retrieval, format_table

__all__ = ["Evaluation", "evaluate", "evaluate_retrieval", "format_table"]
