"""Leases of running generations: proof, renewed in Redis, that a worker still runs them."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from django.conf import settings

from messages_app.streams import reply_key
from messageservice.redis_clients import async_redis

logger = logging.getLogger(__name__)


def lease_key(stream_key: UUID) -> str:
    return reply_key(stream_key, "lease")


async def renew_lease(stream_key: UUID) -> None:
    """Renew the lease of a running generation until cancelled (runs beside the stream)."""
    lease = settings.GENERATION_LEASE_SECONDS
    while True:
        try:
            await async_redis().set(lease_key(stream_key), 1, ex=lease)
        except Exception:
            logger.warning("could not renew the lease of reply %s", stream_key.hex)
        await asyncio.sleep(max(1.0, lease / 3))
