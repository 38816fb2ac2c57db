"""The `local` backend: alt-profanity-check, a small scikit-learn model that runs offline.

What it detects: offensive language and insults ("you are an idiot", swearing at someone),
scored 0.7-1.0. What it misses: threats without swear words ("I will find where you live"),
hate phrased politely or without slurs, self-harm, sexual and illicit content, which it
scores low. It has one score, reported as `harassment` only: it knows no other category,
and inventing scores for them would mislead moderators.
"""

from __future__ import annotations

from messages_app.safety.backends import BackendError


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        # Imported here: scikit-learn alone costs ~100 MB of RSS, paid by the safety worker only.
        from profanity_check import predict_prob

        self._predict_prob = predict_prob
        self._predict_prob(["warm up"])  # the first call builds internal caches

    def classify(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        try:
            probabilities = self._predict_prob(texts)
        except Exception as exc:  # scikit-learn raises ValueError and others
            raise BackendError(f"profanity_check failed: {exc}") from exc
        return [{"harassment": float(p)} for p in probabilities]
