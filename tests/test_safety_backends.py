"""The safety backends in this process: local for real, openai and llama_guard over real HTTP
against fake servers that speak their formats."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from fake_llm.safety import FakeSafetyServer
from messages_app.safety.backends import BackendError, load
from messages_app.safety.categories import CATEGORIES


@pytest.fixture(scope="module")
def safety_server() -> Iterator[FakeSafetyServer]:
    with FakeSafetyServer() as server:
        yield server


@pytest.fixture
def fake(safety_server: FakeSafetyServer, settings: Any) -> Iterator[FakeSafetyServer]:
    safety_server.clear()
    settings.SAFETY_OPENAI_BASE_URL = safety_server.base_url
    settings.SAFETY_LLAMA_GUARD_URL = safety_server.base_url
    settings.OPENAI_API_KEY = "sk-test"
    settings.SAFETY_TIMEOUT_SECONDS = 2.0
    yield safety_server
    safety_server.clear()


def test_the_local_backend_scores_insults_high_and_only_as_harassment():
    backend = load("local")
    insult, kind = backend.classify(["You are a worthless idiot, shut up.", "Have a lovely day!"])
    assert set(insult) == {"harassment"} == set(kind)
    assert insult["harassment"] > 0.9
    assert kind["harassment"] < 0.2
    assert backend.classify([]) == []


def test_the_local_backend_misses_a_threat_without_swear_words_as_documented():
    (threat,) = load("local").classify(["I know where you live and I will find you tonight."])
    assert threat["harassment"] < 0.5


def test_the_openai_backend_reads_every_category_under_its_slash_name(fake):
    fake.moderation["I will hurt myself"] = {"self-harm/intent": 0.91, "self-harm": 0.88}
    fake.moderation["kill them all"] = {"harassment/threatening": 0.8, "illicit/violent": 0.6}
    scores = load("openai").classify(["hello", "I will hurt myself", "kill them all"])
    assert [set(s) for s in scores] == [set(CATEGORIES)] * 3
    assert max(scores[0].values()) == pytest.approx(0.01)
    assert scores[1]["self-harm/intent"] == pytest.approx(0.91)
    assert scores[1]["self-harm"] == pytest.approx(0.88)
    assert scores[2]["harassment/threatening"] == pytest.approx(0.8)
    assert scores[2]["illicit/violent"] == pytest.approx(0.6)
    assert scores[2]["harassment"] == pytest.approx(0.01)
    (request,) = fake.requests
    assert request["path"] == "/v1/moderations"
    assert request["input"] == ["hello", "I will hurt myself", "kill them all"]
    assert request["model"] == "omni-moderation-latest"


@pytest.mark.parametrize("fault", ["http_500", "garbage"])
def test_an_openai_failure_is_a_backend_error(fake, fault):
    fake.fault = fault
    with pytest.raises(BackendError, match="OpenAI moderation failed"):
        load("openai").classify(["hello"])


def test_the_llama_guard_backend_sends_each_text_as_the_user_turn_and_maps_the_codes(fake):
    fake.guard["I will stab you, filthy foreigner"] = "unsafe\nS1,S10"
    fake.guard["how to make a bomb"] = "Unsafe\n s9 \n"
    texts = ["Nice weather today", "I will stab you, filthy foreigner", "how to make a bomb"]
    clean, violent_hate, weapons = load("llama_guard").classify(texts)
    assert set(clean) == set(CATEGORIES) and not any(clean.values())
    assert {k for k, v in violent_hate.items() if v == 1.0} == {"violence", "hate"}
    assert {k for k, v in weapons.items() if v == 1.0} == {"illicit/violent"}
    assert sorted(r["messages"][-1]["content"] for r in fake.requests) == sorted(texts)
    assert all(r["messages"][-1]["role"] == "user" for r in fake.requests)
    assert {r["model"] for r in fake.requests} == {"llama-guard-3-1b"}


@pytest.mark.parametrize(
    ("fault", "message"),
    [("http_500", "Llama Guard request failed"), ("garbage", "unparseable Llama Guard answer")],
)
def test_a_llama_guard_failure_is_a_backend_error_never_safe(fake, fault, message):
    fake.fault = fault
    with pytest.raises(BackendError, match=message):
        load("llama_guard").classify(["one", "two"])


def test_an_unknown_backend_is_a_configuration_error():
    with pytest.raises(ImproperlyConfigured, match="SAFETY_BACKEND must be one of"):
        load("perspective")


def test_the_local_backends_fast_scores_equal_the_librarys_own():
    """`classify` computes predict_prob from the fitted parameters (5x faster on one text);
    on every sentence of the labelled fixture it gives the library's own probabilities."""
    import json
    from pathlib import Path

    from messages_app.safety.backends.local import LocalBackend

    backend = LocalBackend()
    assert backend._score is not None, "the model is not of the shape the fast path reads"
    fixture = Path(__file__).parent / "fixtures" / "safety_labelled.jsonl"
    texts = [json.loads(line)["text"] for line in fixture.read_text().splitlines() if line]
    fast = [scores["harassment"] for scores in backend.classify(texts)]
    library = [float(p) for p in backend._predict_prob(texts)]
    assert len(fast) == len(texts) >= 40
    assert fast == pytest.approx(library, abs=1e-12)
