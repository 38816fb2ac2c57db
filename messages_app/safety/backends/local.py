"""The `local` backend: alt-profanity-check, a small scikit-learn model that runs offline.

What it detects: offensive language and insults ("you are an idiot", swearing at someone),
scored 0.7-1.0. What it misses: threats without swear words ("I will find where you live"),
hate phrased politely or without slurs, self-harm, sexual and illicit content, which it
scores low. It has one score, reported as `harassment` only: it knows no other category,
and inventing scores for them would mislead moderators.

Speed: the model is a TF-IDF vectorizer and a CalibratedClassifierCV of 5 linear SVMs with
sigmoid calibration. The library's `predict_prob` spends ~2.3 of its ~2.8 ms per message in
scikit-learn's per-call overhead around five tiny dot products; on the send path every
millisecond counts, so `classify` computes the same probabilities from the fitted
parameters with one sparse product (~0.3 ms). `exact_scorer` reads them; when the model is not
of that shape (another scikit-learn or library version), `predict_prob` is used as it is. A
test holds both equal on the labelled fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from messages_app.safety.backends import BackendError


def exact_scorer(vectorizer: Any, model: Any) -> Callable[[list[str]], list[float]] | None:
    """`predict_prob` of a CalibratedClassifierCV of linear models with sigmoid calibration,
    from its fitted parameters: for each calibrated classifier i, p_i = 1 / (1 + exp(a_i *
    d_i + b_i)) with d_i = x . w_i + c_i, and the probability is the mean of the p_i (as
    scikit-learn's binary case computes it). None when the model is of another shape."""
    import numpy as np

    try:
        pairs = [(c.estimator, c.calibrators[0]) for c in model.calibrated_classifiers_]
        if getattr(model, "method", None) != "sigmoid" or len(model.classes_) != 2:
            return None
        weights = np.vstack([np.ravel(est.coef_) for est, _ in pairs]).T  # (features, k)
        intercepts = np.array([float(np.ravel(est.intercept_)[0]) for est, _ in pairs])
        slopes = np.array([float(cal.a_) for _, cal in pairs])
        offsets = np.array([float(cal.b_) for _, cal in pairs])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None

    def score(texts: list[str]) -> list[float]:
        decisions = vectorizer.transform(texts) @ weights + intercepts  # (n, k)
        probabilities = 1.0 / (1.0 + np.exp(decisions * slopes + offsets))
        return [float(p) for p in probabilities.mean(axis=1)]

    return score


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        # Imported here: scikit-learn alone costs ~100 MB of RSS, paid by the safety worker only.
        from profanity_check import predict_prob
        from profanity_check import profanity_check as library

        self._predict_prob = predict_prob
        self._predict_prob(["warm up"])  # the first call builds internal caches
        self._score = exact_scorer(library.vectorizer, library.model)
        if self._score is not None:
            self._score(["warm up"])

    def classify(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        try:
            if self._score is not None:
                probabilities = self._score(texts)
            else:
                probabilities = [float(p) for p in self._predict_prob(texts)]
        except Exception as exc:  # scikit-learn raises ValueError and others
            raise BackendError(f"profanity_check failed: {exc}") from exc
        return [{"harassment": p} for p in probabilities]
