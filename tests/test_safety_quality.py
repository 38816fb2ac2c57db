"""The classifier-quality script on the labelled fixture: its figures are the ones computed from
the local backend's scores, and stay within bounds that say the classifier still works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.safety_quality import FIXTURE, Counts, evaluate, load_fixture, measure
from messages_app.safety.backends import load
from tests.test_safety_worker import ROOT


def test_the_labelled_set_has_forty_sentences_over_several_categories():
    rows = load_fixture()
    labels = {name for row in rows for name in row.categories}
    assert len(rows) >= 40
    assert sum(1 for row in rows if not row.categories) >= 15
    assert {"harassment", "violence", "hate", "self-harm", "sexual", "illicit"} <= labels


def test_counts_give_precision_and_recall():
    counts = Counts()
    for expected, predicted in [(True, True), (True, True), (True, False), (False, True)]:
        counts.add(expected=expected, predicted=predicted)
    counts.add(expected=False, predicted=False)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (2, 1, 1, 1)
    assert counts.precision == 2 / 3 and counts.recall == 2 / 3
    assert Counts().precision is None


def test_the_local_backend_figures_are_those_of_its_scores_at_the_threshold(settings):
    settings.SAFETY_THRESHOLD = 0.7
    settings.SAFETY_CATEGORY_THRESHOLDS = {}
    rows = load_fixture()
    report, _ = measure("local", rows)
    scores = [s["harassment"] for s in load("local").classify([r.text for r in rows])]
    harmful = [bool(r.categories) for r in rows]
    flagged = [s >= 0.7 for s in scores]
    tp = sum(h and f for h, f in zip(harmful, flagged, strict=True))
    assert report.flagged.tp == tp
    assert report.flagged.fp == sum(f and not h for h, f in zip(harmful, flagged, strict=True))
    assert report.flagged.fn == sum(h and not f for h, f in zip(harmful, flagged, strict=True))
    assert list(report.per_category) == ["harassment"]  # the only category local scores
    insults = [("harassment" in r.categories) for r in rows]
    assert report.per_category["harassment"].tp == sum(
        i and f for i, f in zip(insults, flagged, strict=True)
    )
    # What the local classifier is for: insults are caught, and what it flags is mostly harmful.
    assert report.per_category["harassment"].recall is not None
    assert report.per_category["harassment"].recall >= 0.85
    assert report.flagged.precision is not None and report.flagged.precision >= 0.85
    # What it is not for: threats, hate without slurs, self-harm, illicit... are mostly missed.
    assert report.flagged.recall is not None and report.flagged.recall < 0.7


def test_the_quality_script_prints_the_figures_it_computes(settings):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="messageservice.settings", ENVIRONMENT="test")
    env.pop("SAFETY_THRESHOLD", None)
    env.pop("SAFETY_CATEGORY_THRESHOLDS", None)
    run = subprocess.run(
        [sys.executable, "-m", "bench.safety_quality", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    printed = json.loads(run.stdout)
    settings.SAFETY_THRESHOLD = 0.7
    settings.SAFETY_CATEGORY_THRESHOLDS = {}
    report, _ = measure("local", load_fixture(FIXTURE))
    assert printed == report.as_dict()


def test_the_script_measures_no_remote_backend_without_a_real_model():
    run = subprocess.run(
        [sys.executable, "-m", "bench.safety_quality", "--backend", "openai"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "not measured" in run.stderr and run.stdout == ""


def test_evaluate_counts_only_the_categories_a_backend_scores():
    rows = load_fixture()[:3]
    report = evaluate(
        rows, [["harassment"], [], ["hate"]], scored=["hate"], backend="x", threshold=0.5
    )
    assert list(report.per_category) == ["hate"]
    assert report.per_category["hate"].fp == 1
    assert report.flagged.tp == 2 and report.flagged.fn == 1
