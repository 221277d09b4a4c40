"""CLI smoke tests on real data: ml.evaluate (cached embeddings) and ml.simulate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.ml._embeddings import REPO_ROOT, datasets_dir, shoes_copy

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
    (["--finetune", "--ft", "eval_views=center,tile2"], "--ft eval_views: tile2 not usable"),
])
def test_evaluate_cli_names_the_bad_option_instead_of_a_traceback(tmp_path: Path, args, message):
    proc = subprocess.run([sys.executable, "-m", "ml.evaluate", "--task", "shoes-3", *args,
                           "--json", str(tmp_path / "x.json")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


def _fails(module: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc


def test_both_clis_name_a_data_folder_that_lacks_the_task_before_any_work(tmp_path: Path):
    if not (datasets_dir() / "shoes").is_dir():
        pytest.skip("shoes dataset not available")
    shoes_copy(tmp_path, per_class=1)  # shoes only: every fl27 task must say what is missing
    for module in ("ml.evaluate", "ml.simulate"):
        proc = _fails(module, "--task", "fl27-28way", "--data", str(tmp_path), "--json", str(tmp_path / "x.json"))
        assert f"fl27-28way: missing {tmp_path}/flickrlogos27/images" in proc.stderr
        proc = _fails(module, "--task", "shoes-3", "--data", str(tmp_path / "nowhere"),
                      "--json", str(tmp_path / "x.json"))
        assert "no shoes/ or flickrlogos27/ under" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_both_clis_refuse_a_json_path_they_could_not_write_before_any_work(tmp_path: Path):
    if not (datasets_dir() / "shoes").is_dir():
        pytest.skip("shoes dataset not available")  # the data check comes first
    (tmp_path / "runs").write_text("a file where a folder was meant")
    for module in ("ml.evaluate", "ml.simulate"):
        proc = _fails(module, "--task", "shoes-3", "--json", str(tmp_path / "runs" / "r.json"))
        assert f"--json: {tmp_path / 'runs'} is a file, not a folder" in proc.stderr


def test_simulate_cli_names_an_unknown_strategy_before_any_work(tmp_path: Path):
    proc = _fails("ml.simulate", "--task", "shoes-3", "--strategies", "random,uncertain",
                  "--json", str(tmp_path / "x.json"))
    assert "--strategies: uncertain; choose from diverse, entropy, margin" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_evaluate_cli_leaves_unreadable_photos_out_by_name_and_scores_the_rest(tmp_path: Path):
    if not (datasets_dir() / "shoes").is_dir():
        pytest.skip("shoes dataset not available")
    data = shoes_copy(tmp_path / "data", per_class=6)
    good = next((data / "shoes" / "train" / "nike").iterdir())
    (data / "shoes" / "train" / "nike" / "cut.jpg").write_bytes(good.read_bytes()[:1500])
    (data / "shoes" / "test" / "adidas" / "readme.txt").write_text("shot on 2026-11-20")
    out = tmp_path / "r.json"
    proc = _run("ml.evaluate", "--task", "shoes-3", "--method", "head", "--data", str(data), "--json", str(out))
    assert "shoes-3: left out cut.jpg: unreadable image: corrupt or truncated" in proc.stderr
    assert "shoes-3: left out readme.txt: unreadable image: not a recognised image format" in proc.stderr
    r = json.loads(out.read_text())
    assert (r["n_train"], r["n_test"]) == (18, 18)
    assert sorted(f["files"][0] for f in r["flagged"]) == ["cut.jpg", "readme.txt"]


def test_evaluate_cli_refuses_a_blend_it_cannot_use(tmp_path: Path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not numpy")
    cases = [(["--blend", str(tmp_path / "none.npz")], "--blend: no such file"),
             (["--blend", str(junk)], "not a file saved by --save-proba"),
             (["--blend", str(junk), "--finetune"], "--blend: for head methods"),
             (["--blend", str(junk), "--blend-weight", "1.5"], "--blend-weight: 1.5 is not between")]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "ml.evaluate", "--task", "shoes-3", "--method", "head",
                               *args, "--json", str(tmp_path / "x.json")],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr
    if (datasets_dir() / "flickrlogos27").is_dir():  # --task all checks it on the fl27 folds
        proc = subprocess.run([sys.executable, "-m", "ml.evaluate", "--task", "all", "--blend", str(junk),
                               "--json", str(tmp_path / "x.json")],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "not a file saved by --save-proba" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_blend_averages_the_heads_test_probabilities_with_a_saved_run(tmp_path: Path):
    if not (datasets_dir() / "shoes").is_dir():
        pytest.skip("shoes dataset not available")
    from ml.datasets import load_task
    from ml.evaluate import evaluate
    from ml.saved_runs import save_proba

    task = load_task("shoes-3", datasets_dir())
    _, te = task.splits[0]
    truth, uniform = tmp_path / "truth.npz", tmp_path / "uniform.npz"
    save_proba(str(truth), task, te, np.eye(3)[task.y[te]])
    save_proba(str(uniform), task, te, np.full((len(te), 3), 1 / 3))
    run = lambda **kw: evaluate("shoes-3", "head", data_dir=str(datasets_dir()), **kw)  # noqa: E731
    alone = run()
    assert run(blend_from=str(truth), blend_weight=1.0)["accuracy"] == 1.0
    assert run(blend_from=str(truth), blend_weight=0.0)["accuracy"] == alone["accuracy"]
    # a uniform run shifts every class alike: the head's ranking, and so its accuracy, stays
    blended = run(blend_from=str(uniform))
    assert blended["accuracy"] == alone["accuracy"] and blended["blend"]["weight"] == 0.5
    assert blended["top3_accuracy"] == alone["top3_accuracy"]
    # several runs (seeds of one fine-tune) are averaged before the blend
    both = run(blend_from=f"{truth},{uniform}", blend_weight=1.0)
    assert both["accuracy"] == 1.0 and both["blend"]["file"] == f"{truth},{uniform}"
    # a run that lacks a few test images blends the rest; one that lacks most is another run's
    partial, stray = tmp_path / "partial.npz", tmp_path / "stray.npz"
    save_proba(str(partial), task, te[2:], np.eye(3)[task.y[te[2:]]])
    save_proba(str(stray), task, te[:10], np.eye(3)[task.y[te[:10]]])
    r = run(blend_from=str(partial), blend_weight=1.0)
    assert r["blend"]["missing"] == 2 and r["accuracy"] >= (len(te) - 2) / len(te)
    with pytest.raises(ValueError, match="no saved probabilities for 104 of 114"):
        run(blend_from=str(stray))


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


def test_simulate_cli_with_local_matching_scores_the_loop_as_the_app_would(tmp_path: Path):
    """``--local yes``: every round fuses SIFT matches to the labels so far (ml.simulate.LocalLoop)
    into the head's probabilities, for the pick and for the score. On FlickrLogos the reference
    (all labels) gains ~9 points, as in ml.evaluate --local (docs/ml-results.md, round 10)."""
    if not (datasets_dir() / "flickrlogos27").is_dir():
        pytest.skip("FlickrLogos-27 not available")
    runs = {}
    for local in ("no", "yes"):
        out = tmp_path / f"sim_{local}.json"
        _run("ml.simulate", "--task", "fl27-28way", "--strategies", "diverse", "--batch", "20",
             "--max-labels", "68", "--repeats", "1", "--local", local, "--json", str(out))
        runs[local] = json.loads(out.read_text())
    on, off = runs["yes"], runs["no"]
    assert on["local_matching"] is True and off["local_matching"] is False
    assert on["all_labels_accuracy"] > off["all_labels_accuracy"] + 0.05
    assert 0 < on["local_weights"]["median"] and "local_weights" not in off
    assert [c["labels"] for c in on["strategies"]["diverse"]["curve"]] == [28, 48, 68]
