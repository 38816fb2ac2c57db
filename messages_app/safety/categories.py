"""The 13 moderation categories, their thresholds, and the verdict a check returns.

Categories are named after OpenAI's omni-moderation categories; Llama Guard 3's hazard codes
S1-S14 map onto them (LLAMA_GUARD_MAP). Importing this module loads no classifier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_KNOWN = frozenset(CATEGORIES)

# Llama Guard 3 hazard codes (MLCommons taxonomy) -> the category a flag of that code counts
# as. Where OpenAI has no equivalent the closest one is chosen, so that no flag is lost:
LLAMA_GUARD_MAP: dict[str, str] = {
    "S1": "violence",  # Violent Crimes
    "S2": "illicit",  # Non-Violent Crimes (fraud, theft, drugs, hacking)
    "S3": "sexual",  # Sex-Related Crimes (assault, trafficking); no "sexual crime" category
    "S4": "sexual/minors",  # Child Sexual Exploitation
    "S5": "harassment",  # Defamation: false statements that hurt a living person
    "S6": "illicit",  # Specialized Advice (medical, legal, financial): no equivalent; closest
    "S7": "harassment",  # Privacy: exposing a person's private data (doxxing) targets them
    "S8": "illicit",  # Intellectual Property: infringement is wrongdoing
    "S9": "illicit/violent",  # Indiscriminate Weapons (CBRNE): weapons advice
    "S10": "hate",  # Hate
    "S11": "self-harm",  # Suicide & Self-Harm
    "S12": "sexual",  # Sexual Content
    "S13": "illicit",  # Elections: voting misinformation; no equivalent, closest
    "S14": "illicit",  # Code Interpreter Abuse: exploits, escapes
}


def check_settings() -> None:
    """Raise ImproperlyConfigured when SAFETY_THRESHOLD or SAFETY_CATEGORY_THRESHOLDS is wrong:
    a threshold outside 0..1, or a category name that is not one of CATEGORIES."""
    _threshold_value("SAFETY_THRESHOLD", settings.SAFETY_THRESHOLD)
    overrides: Any = settings.SAFETY_CATEGORY_THRESHOLDS
    if not isinstance(overrides, Mapping):
        raise ImproperlyConfigured(
            'SAFETY_CATEGORY_THRESHOLDS must be a JSON object, e.g. {"harassment": 0.8}'
        )
    unknown = sorted(set(overrides) - _KNOWN)
    if unknown:
        raise ImproperlyConfigured(
            f"SAFETY_CATEGORY_THRESHOLDS names unknown categories {unknown}; "
            f"known: {', '.join(CATEGORIES)}"
        )
    for name, value in overrides.items():
        _threshold_value(f"SAFETY_CATEGORY_THRESHOLDS[{name!r}]", value)


def _threshold_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ImproperlyConfigured(f"{name} must be a number from 0 to 1, not {value!r}")
    return float(value)


def threshold_for(category: str) -> float:
    """The score at or over which `category` flags a text (ValueError for an unknown name)."""
    if category not in _KNOWN:
        raise ValueError(f"unknown safety category {category!r}")
    value = settings.SAFETY_CATEGORY_THRESHOLDS.get(category, settings.SAFETY_THRESHOLD)
    return float(value)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one check.

    `categories` are those at or over their threshold, highest score first; `scores` are
    what the backend reported (only the categories it has: `local` reports `harassment` only).
    """

    flagged: bool
    categories: list[str]
    scores: dict[str, float]
    backend: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "categories": list(self.categories),
            "scores": dict(self.scores),
            "backend": self.backend,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(
            flagged=bool(data["flagged"]),
            categories=[str(c) for c in data["categories"]],
            scores={str(k): float(v) for k, v in data["scores"].items()},
            backend=str(data["backend"]),
        )


def judge(scores: Mapping[str, float], *, backend: str | None = None) -> Verdict:
    """The verdict on `scores` (category -> 0..1) under the configured thresholds.

    `backend` names who scored (default SAFETY_BACKEND). ValueError for an unknown category.
    """
    over = [(score, name) for name, score in scores.items() if score >= threshold_for(name)]
    over.sort(key=lambda pair: (-pair[0], pair[1]))
    return Verdict(
        flagged=bool(over),
        categories=[name for _, name in over],
        scores={name: float(score) for name, score in scores.items()},
        backend=settings.SAFETY_BACKEND if backend is None else backend,
    )
