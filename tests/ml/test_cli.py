"""CLI smoke tests on real data: ml.evaluate (cached embeddings) and ml.simulate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.ml._embeddings import REPO_ROOT, datasets_dir

METRIC_KEYS = {"task", "backbone", "method", "n_train", "n_test", "accuracy", "accuracy_ci95",
               "top3_accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion",
               "labels", "seconds"}


def _run(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    if not (datasets_dir() / "shoes").is_dir():
        pytest.skip("shoes dataset not available")
    env = {**os.environ, "TAGLOOP_DATA": str(datasets_dir())}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_evaluate_cli_shoes_head(tmp_path: Path):
    out = tmp_path / "shoes.json"
    proc = _run("ml.evaluate", "--task", "shoes-3", "--method", "head", "--json", str(out))
    r = json.loads(out.read_text())
    assert METRIC_KEYS <= set(r)
    assert r["task"] == "shoes-3" and r["method"] == "head"
    assert (r["n_train"], r["n_test"]) == (711, 114)
    assert r["labels"] == ["adidas", "converse", "nike"]
    assert np.array(r["confusion"]).sum() == 114
    # the frozen-feature baseline (issue: 80.7 %); the 88 % target needs fine-tuning
    assert r["accuracy"] >= 0.78
    assert "| shoes-3 | head |" in proc.stdout


def test_evaluate_cli_tunes_a_decision_bias_on_the_training_part(tmp_path: Path):
    out = tmp_path / "shoes_bias.json"
    _run("ml.evaluate", "--task", "shoes-3", "--method", "head", "--decision", "balanced_accuracy",
         "--json", str(out))
    r = json.loads(out.read_text())
    assert r["decision"] == "per-class bias tuned for balanced_accuracy by inner CV"
    (fold,) = r["folds"]
    assert len(fold["decision_bias"]) == 3 and fold["decision_bias"][0] == 0.0
    # balanced shoes: a bias can only nudge the head, never wreck it
    assert r["balanced_accuracy"] >= 0.78


@pytest.mark.parametrize("args, message", [
    (["--backbone", "efficientnet-lite0,efficientnet-lite2", "--method", "head"], "needs --method search"),
    (["--features", "center,tiles9:max"], "--features: bad views"),
])
def test_evaluate_cli_names_the_bad_option_instead_of_a_traceback(tmp_path: Path, args, message):
    proc = subprocess.run([sys.executable, "-m", "ml.evaluate", "--task", "shoes-3", *args,
                           "--json", str(tmp_path / "x.json")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_simulate_cli_default_strategy_beats_random(tmp_path: Path):
    """The product's default strategy ("diverse", ml.selection) against random labelling on
    shoes-3, one seed label per class, pages of 10, the same 3 seed sets for both.

    Full-pool run (docs/ml-results.md): diverse first reaches 95 % of the all-labels accuracy
    at 143 labels, random at 243 (ratio 0.59 -- the issue's <= 0.50 is not met). This budget
    (153 labels) stops just after diverse gets there and long before random does."""
    out = tmp_path / "sim.json"
    _run("ml.simulate", "--task", "shoes-3", "--strategies", "random,diverse",
         "--seed-per-class", "1", "--batch", "10", "--max-labels", "153", "--repeats", "3",
         "--json", str(out))
    r = json.loads(out.read_text())
    assert {"all_labels_accuracy", "target_95pct", "strategies", "winner"} <= set(r)
    for s in ("random", "diverse"):
        v = r["strategies"][s]
        assert {"curve", "labels_to_95pct", "labels_vs_random", "final_accuracy"} <= set(v)
        assert [c["labels"] for c in v["curve"]] == list(range(3, 154, 10))
    div, rnd = r["strategies"]["diverse"], r["strategies"]["random"]
    assert r["winner"] == "diverse"
    # diverse reaches 95 % of the all-labels accuracy within the budget, random does not
    # (or later), and diverse is ahead on average along the whole curve
    assert div["labels_to_95pct"] is not None
    assert rnd["labels_to_95pct"] is None or rnd["labels_to_95pct"] > div["labels_to_95pct"]
    assert div["mean_accuracy"] > rnd["mean_accuracy"]
