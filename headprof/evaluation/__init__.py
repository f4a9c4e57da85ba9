"""What compression costs: every item under every method x budget, scored, cached and summarised.

An item is a probe, a generated RULER row or a LongBench-layout task row (`items.py`); `evaluate` (`run.py`)
answers it under every method x budget, scored by exact match (the normalised gold answer occurs in the
normalised answer) and token F1 (best over gold answers), and task items also by their task's own metric
(`headprof.tasks`). Results are cached per (model, method, budget, parameters, item) in a JSONL file
(`records.py`), so an interrupted run resumes and adding a method reruns nothing else; `summary.py` turns
records into rows per method x budget and figures. The names below are served from those modules on first use.

Head ablation lives in `ablation.py`, the agreement of scores across needles in `reliability.py`.
"""

from headprof.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "EvalItem",
            "check_disjoint",
            "collect_items",
            "items_from_probes",
            "items_from_rows",
            "items_from_task",
            "read_inputs",
        ),
        "headprof.evaluation.items",
    ),
    **dict.fromkeys(("EvalRecord", "ResultCache"), "headprof.evaluation.records"),
    **dict.fromkeys(("Column", "EvalConfig", "RESULTS_REVISION", "alloc_label", "evaluate"), "headprof.evaluation.run"),
    **dict.fromkeys(
        (
            "accuracy_points",
            "eval_report",
            "needle_grid",
            "needles_png_path",
            "summarize",
            "task_scores",
            "write_figures",
        ),
        "headprof.evaluation.summary",
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
