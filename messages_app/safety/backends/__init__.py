"""Classifier backends of the safety worker: one interface, `classify(texts) -> scores`.

Each backend module is imported only by `load()`, in the safety worker: the client must not pull
scikit-learn or the openai SDK into daphne.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured

# name -> "module:class"
BACKENDS: dict[str, str] = {
    "local": "messages_app.safety.backends.local:LocalBackend",
    "openai": "messages_app.safety.backends.openai_moderation:OpenAIModerationBackend",
    "llama_guard": "messages_app.safety.backends.llama_guard:LlamaGuardBackend",
}


class BackendError(Exception):
    """A backend could not classify (server error, unparseable answer, ...)."""


class Backend(Protocol):
    name: str

    def classify(self, texts: list[str]) -> list[dict[str, float]]:
        """Scores (category -> 0..1) for each text, in order; raises BackendError."""
        ...


def load(name: str) -> Backend:
    """The backend `name` (one of BACKENDS), ready to classify; ImproperlyConfigured if unknown."""
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise ImproperlyConfigured(
            f"SAFETY_BACKEND must be one of {', '.join(BACKENDS)}, not {name!r}"
        ) from None
    backend: Backend = getattr(importlib.import_module(module_name), class_name)()
    return backend
