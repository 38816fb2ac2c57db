"""Leases of running generations: proof, renewed in Redis, that a worker still runs them."""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from messageservice.redis_clients import async_redis

logger = logging.getLogger(__name__)


def lease_key(generation_id: int) -> str:
    return f"{settings.SERVICE_NAME}:gen:{generation_id}:lease"


async def renew_lease(generation_id: int) -> None:
    """Renew the lease of a running generation until cancelled (runs beside the stream)."""
    lease = settings.GENERATION_LEASE_SECONDS
    while True:
        try:
            await async_redis().set(lease_key(generation_id), 1, ex=lease)
        except Exception:
            logger.warning("could not renew the lease of generation %s", generation_id)
        await asyncio.sleep(max(1.0, lease / 3))
