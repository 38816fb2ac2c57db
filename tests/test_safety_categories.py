"""Safety categories, thresholds, verdicts, and the parsing of Llama Guard's answers."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from messages_app.safety.backends import BackendError
from messages_app.safety.backends.llama_guard import parse_answer
from messages_app.safety.categories import (
    CATEGORIES,
    LLAMA_GUARD_MAP,
    Verdict,
    check_settings,
    judge,
    threshold_for,
)


def test_the_categories_are_openais_thirteen_omni_moderation_names():
    assert len(CATEGORIES) == 13 == len(set(CATEGORIES))
    assert {"harassment/threatening", "self-harm/instructions", "sexual/minors"} <= set(CATEGORIES)


def test_every_llama_guard_hazard_code_maps_onto_one_of_the_categories():
    assert sorted(LLAMA_GUARD_MAP, key=lambda c: int(c[1:])) == [f"S{i}" for i in range(1, 15)]
    assert set(LLAMA_GUARD_MAP.values()) <= set(CATEGORIES)
    assert LLAMA_GUARD_MAP["S4"] == "sexual/minors"
    assert LLAMA_GUARD_MAP["S10"] == "hate"
    assert LLAMA_GUARD_MAP["S11"] == "self-harm"


def test_a_category_threshold_overrides_the_global_one(settings):
    settings.SAFETY_THRESHOLD = 0.7
    settings.SAFETY_CATEGORY_THRESHOLDS = {"sexual/minors": 0.2}
    assert threshold_for("sexual/minors") == 0.2
    assert threshold_for("hate") == 0.7
    with pytest.raises(ValueError, match="unknown safety category"):
        threshold_for("spam")


def test_judge_flags_categories_at_or_over_their_threshold_highest_score_first(settings):
    settings.SAFETY_THRESHOLD = 0.7
    settings.SAFETY_CATEGORY_THRESHOLDS = {"sexual/minors": 0.2}
    verdict = judge(
        {"harassment": 0.7, "hate": 0.69, "violence": 0.95, "sexual/minors": 0.25},
        backend="openai",
    )
    assert verdict.flagged
    assert verdict.categories == ["violence", "harassment", "sexual/minors"]
    assert verdict.backend == "openai"
    clean = judge({"harassment": 0.1})
    assert not clean.flagged and clean.categories == []
    assert clean.backend == settings.SAFETY_BACKEND


def test_a_verdict_survives_a_json_round_trip():
    verdict = judge({"harassment": 0.9, "hate": 0.1}, backend="local")
    assert Verdict.from_dict(verdict.as_dict()) == verdict


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"harassment": 0.5, "spam": 0.3}, "unknown categories \\['spam'\\]"),
        ({"hate": 1.5}, "must be a number from 0 to 1"),
        ({"hate": "high"}, "must be a number from 0 to 1"),
        (["hate"], "must be a JSON object"),
    ],
)
def test_wrong_category_thresholds_are_a_configuration_error(settings, overrides, message):
    settings.SAFETY_CATEGORY_THRESHOLDS = overrides
    with pytest.raises(ImproperlyConfigured, match=message):
        check_settings()


def test_the_default_thresholds_are_valid(settings):
    settings.SAFETY_CATEGORY_THRESHOLDS = {"harassment": 0.8, "sexual/minors": 0.2}
    check_settings()


@pytest.mark.parametrize(
    ("answer", "flagged"),
    [
        ("safe", []),
        ("  Safe \n", []),
        ("unsafe\nS1,S10", ["hate", "violence"]),
        ("\nUNSAFE\n s1 , s10 \n", ["hate", "violence"]),
        ("unsafe\nS4", ["sexual/minors"]),
        ("unsafe\nS9\n", ["illicit/violent"]),
        ("unsafe\nS1,", ["violence"]),  # a trailing comma: the codes given are all known
    ],
)
def test_llama_guard_answers_are_parsed_into_scores(answer, flagged):
    scores = parse_answer(answer)
    assert set(scores) == set(CATEGORIES)
    assert sorted(name for name, score in scores.items() if score == 1.0) == flagged
    assert all(score in (0.0, 1.0) for score in scores.values())


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "I think it is fine",
        "unsafe",
        "unsafe\nS15",
        "unsafe\nviolence",
        "safe\nS1",
        "unsafe\nS1,x",
    ],
)
def test_an_unparseable_llama_guard_answer_is_an_error_never_safe(answer):
    with pytest.raises(BackendError, match="unparseable"):
        parse_answer(answer)
