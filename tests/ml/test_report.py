"""ml.report: the `--task all` table (recipes and formatting; the runs are ml.evaluate's)."""
from __future__ import annotations

import inspect

from ml.datasets import TASKS
from ml.evaluate import evaluate
from ml.report import RECIPES, format_summary


def test_every_task_has_a_recipe_that_evaluate_accepts():
    assert set(RECIPES) == set(TASKS)
    params = set(inspect.signature(evaluate).parameters)
    for task, (key, *_rest, kwargs) in RECIPES.items():
        assert key in ("accuracy", "balanced_accuracy", "macro_f1"), task
        assert set(kwargs) <= params, (task, set(kwargs) - params)


def test_the_summary_reads_like_the_issue_table():
    rows = [
        {"task": "shoes-3", "metric": "test accuracy", "percent": True, "baseline": 0.807,
         "seed_figure": "88.6 % (seed 000)", "target": 0.88, "measured": 0.904, "met": True,
         "recipe": "--method search"},
        {"task": "fl27-logo", "metric": "macro-F1", "percent": False, "baseline": 0.94,
         "seed_figure": "-", "target": 0.96, "measured": 0.9588, "met": False, "recipe": "--method multicrop"},
    ]
    text = format_summary(rows).splitlines()
    assert text[0].startswith("| task | metric | baseline | seed's figure | target | measured | met?")
    assert text[2] == ("| shoes-3 | test accuracy | 80.7 % | 88.6 % (seed 000) | >= 88.0 % | 90.4 % | yes | "
                       "`--method search` |")
    assert "| >= 0.960 | 0.959 | no |" in text[3]
