"""The `llama_guard` backend: Llama Guard 3 on any OpenAI-compatible server (vLLM, llama.cpp...).

Each text goes as the user turn of a non-streaming chat completion; the server's chat template
wraps it in Llama Guard's prompt. The answer is `safe`, or `unsafe` and a line of hazard codes
(`S1,S10`), mapped through LLAMA_GUARD_MAP: a flagged category scores 1.0, the others 0.0.
Anything else is an error, never "safe". A batch's texts are sent concurrently.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import openai
from django.conf import settings

from messages_app.safety.backends import BackendError
from messages_app.safety.categories import CATEGORIES, LLAMA_GUARD_MAP

# Requests in flight at once for one batch.
CONCURRENCY = 8
_CODE_RE = re.compile(r"s(\d{1,2})")


def parse_answer(answer: str) -> dict[str, float]:
    """Scores from Llama Guard's answer; BackendError if it is neither `safe` nor
    `unsafe` followed by known hazard codes. Case, blank lines and spaces are tolerated."""
    lines = [line.strip().lower() for line in answer.strip().splitlines() if line.strip()]
    scores = dict.fromkeys(CATEGORIES, 0.0)
    if lines == ["safe"]:
        return scores
    if len(lines) >= 2 and lines[0] == "unsafe":
        codes = [code.strip() for code in lines[1].split(",") if code.strip()]
        matches = [_CODE_RE.fullmatch(code) for code in codes]
        keys = [f"S{int(m.group(1))}" for m in matches if m is not None]
        if codes and len(keys) == len(codes) and all(key in LLAMA_GUARD_MAP for key in keys):
            for key in keys:
                scores[LLAMA_GUARD_MAP[key]] = 1.0
            return scores
    raise BackendError(f"unparseable Llama Guard answer: {answer[:200]!r}")


class LlamaGuardBackend:
    name = "llama_guard"

    def __init__(self) -> None:
        self.model = settings.SAFETY_LLAMA_GUARD_MODEL
        self.client = openai.OpenAI(
            base_url=settings.SAFETY_LLAMA_GUARD_URL,
            api_key=settings.SAFETY_LLAMA_GUARD_API_KEY or "not-needed",
            timeout=settings.SAFETY_TIMEOUT_SECONDS,
            max_retries=0,
        )
        self.pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="llama-guard")

    def classify(self, texts: list[str]) -> list[dict[str, float]]:
        if len(texts) <= 1:
            return [self._one(text) for text in texts]
        return list(self.pool.map(self._one, texts))

    def _one(self, text: str) -> dict[str, float]:
        try:
            completion = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": text}],
                max_tokens=20,
                temperature=0,
            )
            answer = completion.choices[0].message.content or ""
        # Bodies that are not JSON or lack choices surface as ValueError, IndexError...
        except (openai.OpenAIError, ValueError, AttributeError, TypeError, IndexError) as exc:
            raise BackendError(f"Llama Guard request failed: {exc!r}") from exc
        return parse_answer(answer)
