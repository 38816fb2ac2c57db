"""The `openai` backend: OpenAI's moderation endpoint (omni-moderation) through the openai SDK.

Its 13 categories are ours. SAFETY_OPENAI_BASE_URL points it elsewhere (a proxy, a fake in
tests); OPENAI_API_KEY authenticates.
"""

from __future__ import annotations

import openai
from django.conf import settings

from messages_app.safety.backends import BackendError
from messages_app.safety.categories import CATEGORIES


class OpenAIModerationBackend:
    name = "openai"

    def __init__(self) -> None:
        self.model = settings.SAFETY_OPENAI_MODEL
        self.client = openai.OpenAI(
            api_key=settings.OPENAI_API_KEY or "missing",
            base_url=settings.SAFETY_OPENAI_BASE_URL or None,
            # A check has SAFETY_TIMEOUT_SECONDS in all: no time for a retry.
            timeout=settings.SAFETY_TIMEOUT_SECONDS,
            max_retries=0,
        )

    def classify(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        try:
            response = self.client.moderations.create(model=self.model, input=texts)
            # The SDK's attributes are harassment_threatening etc.; by_alias gives the API's names.
            scores = [
                _scores(result.category_scores.model_dump(by_alias=True))
                for result in response.results
            ]
        # A body that is not JSON, or not of the moderation shape, surfaces from the SDK as
        # ValueError (json, pydantic) or AttributeError rather than as an OpenAIError.
        except (openai.OpenAIError, ValueError, AttributeError, TypeError) as exc:
            raise BackendError(f"OpenAI moderation failed: {exc!r}") from exc
        if len(scores) != len(texts):
            raise BackendError(
                f"OpenAI moderation returned {len(scores)} results for {len(texts)} texts"
            )
        return scores


def _scores(raw: dict[str, object]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for name in CATEGORIES:
        value = raw.get(name)
        # Older moderation models have no illicit scores: absent means not scored, i.e. 0.
        scores[name] = float(value) if isinstance(value, int | float) else 0.0
    return scores
