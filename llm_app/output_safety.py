"""Live content checks of a streaming reply.

While a reply streams, the text so far is sent to the safety worker at sentence ends and at
least every SAFETY_OUTPUT_CHECK_TOKENS deltas, one check at a time, without holding a delta
back: the stream goes on while the check runs. A check that flags the text trips the monitor,
and the generation stops the stream and ends the reply `blocked`. When the stream ends, the
whole reply is checked once more (unless the last check already saw all of it), so the end of
a reply is never left unchecked.

A check that fails (the safety worker is down or late) never blocks a reply: it is logged,
and the next sentence is checked again. A reply whose end no check saw (the last checks
failed, or it was cancelled or failed mid-sentence) is reviewed after the fact by the message
processor (`review_after_end`, messages_app.output_review), as is every reply with
SAFETY_OUTPUT_MODE=after, which turns the live checks off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from django.conf import settings

from messages_app.safety.categories import Verdict
from messages_app.safety.client import SafetyUnavailable, acheck

logger = logging.getLogger(__name__)

_SENTENCE_ENDS = frozenset(".!?…\n")


class Blocked(Exception):
    """The reply crossed the safety threshold."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(", ".join(verdict.categories))
        self.verdict = verdict


class OutputMonitor:
    """The live checks of one reply's stream."""

    def __init__(self, *, every: int) -> None:
        self.every = max(1, every)
        self.checked_seq = 0  # the seq of the text the last check was sent
        self.verified_seq = 0  # the seq of the longest text a check answered for
        self.pending: asyncio.Task[None] | None = None
        self.verdict: Verdict | None = None  # the verdict that flagged the reply
        self.tripped = asyncio.Event()

    @classmethod
    def for_reply(cls) -> OutputMonitor | None:
        if not settings.ENABLE_CONTENT_FILTERING or settings.SAFETY_OUTPUT_MODE == "after":
            return None
        return cls(every=settings.SAFETY_OUTPUT_CHECK_TOKENS)

    def after_delta(self, seq: int, piece: str, parts: list[str]) -> None:
        """Called after each published delta: maybe start a check of the text so far."""
        if self.verdict is not None or (self.pending is not None and not self.pending.done()):
            return
        if seq - self.checked_seq >= self.every or (
            piece and piece.rstrip(" ")[-1:] in _SENTENCE_ENDS
        ):
            self.checked_seq = seq
            self.pending = asyncio.ensure_future(self._check("".join(parts), seq))

    async def _check(self, text: str, seq: int) -> None:
        try:
            verdict = await acheck(text, kind="output")
        except SafetyUnavailable as exc:
            logger.warning("output check failed (%s); the reply streams on", exc)
            return
        self.verified_seq = max(self.verified_seq, seq)
        if verdict.flagged and self.verdict is None:
            self.verdict = verdict
            self.tripped.set()

    async def final(self, seq: int, parts: list[str]) -> None:
        """The stream ended: raise Blocked if the reply, all of it, crosses the threshold."""
        if self.pending is not None:
            await self.pending
        if self.verdict is None and seq > self.checked_seq and parts:
            self.checked_seq = seq
            await self._check("".join(parts), seq)
        if self.verdict is not None:
            raise Blocked(self.verdict)

    async def close(self) -> None:
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()
            with contextlib.suppress(BaseException):
                await self.pending


def review_after_end(monitor: OutputMonitor | None, seq: int) -> bool:
    """Whether the content check of a reply that ended with `seq` deltas (not blocked) falls
    to the message processor: always with SAFETY_OUTPUT_MODE=after; inline, when no check
    answered for its whole text (or its live checks are unknown: `monitor` None, as for a
    reply whose worker died). Never for an empty reply or with content filtering off."""
    if seq <= 0 or not settings.ENABLE_CONTENT_FILTERING:
        return False
    if settings.SAFETY_OUTPUT_MODE == "after" or monitor is None:
        return True
    return monitor.verified_seq < seq
