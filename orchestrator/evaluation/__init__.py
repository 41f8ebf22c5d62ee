"""Evaluation (``hbat eval``) and the schedule comparison (``hbat compare``).

``evaluate_model(model, EvalConfig(...))`` generates answers with rollout
actors and scores them with metric suites (``suites/``); ``run_compare``
trains every method of a compare config and tabulates and plots the result.
"""

from hbat.orchestrator.evaluation.evalset import EvalExample, eval_set_from_records, load_eval_set
from hbat.orchestrator.evaluation.settings import EvalConfig, JudgeConfig
from hbat.orchestrator.evaluation.stats import Metric

__all__ = ["EvalConfig", "EvalExample", "JudgeConfig", "Metric", "eval_set_from_records", "evaluate_model",
           "load_compare_config", "load_eval_set", "run_compare"]


def __getattr__(name):  # heavy imports (ray, torch) only when used
    if name == "evaluate_model":
        from hbat.orchestrator.evaluation.evaluate import evaluate_model

        return evaluate_model
    if name in ("run_compare", "load_compare_config"):
        from hbat.orchestrator.evaluation import compare

        return getattr(compare, name)
    raise AttributeError(name)
