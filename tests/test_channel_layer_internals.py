"""The channels-redis internals that messageservice.channel_layer relies on are still there.

Everything the service takes from channels-redis beyond its public API sits in
messageservice/channel_layer.py. These tests fail when an upgrade renames or reshapes it.
"""

from __future__ import annotations

import inspect

import redis.asyncio as aredis
from channels.layers import get_channel_layer
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from django.conf import settings

from messageservice.channel_layer import (
    PromptPubSubChannelLayer,
    _PromptShard,
    group_publisher,
)


def test_the_private_members_the_prompt_receiver_overrides_or_reads_still_exist():
    shard_members = {"_do_receiving", "_receive_message", "subscribe", "__init__"}
    assert shard_members <= set(vars(RedisSingleShardConnection))
    assert list(inspect.signature(RedisSingleShardConnection.__init__).parameters) == [
        "self",
        "host",
        "channel_layer",
    ]
    assert "_get_layer" in vars(RedisPubSubChannelLayer)
    assert "_get_group_channel_name" in vars(RedisPubSubLoopLayer)


async def test_our_group_channel_is_the_one_channels_redis_publishes_a_group_on():
    layer = get_channel_layer()
    assert isinstance(layer, PromptPubSubChannelLayer)
    loop_layer = layer._get_layer()
    assert all(isinstance(shard, _PromptShard) for shard in loop_layer._shards)
    group = "conversation.0123abcd"
    assert layer.group_channel(group) == loop_layer._get_group_channel_name(group)


async def test_a_message_published_on_the_group_channel_reaches_a_group_member():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("conversation.internals", channel)
    publisher = group_publisher(layer, "conversation.internals")
    assert publisher is not None
    pubsub_channel, serialize = publisher
    client = aredis.Redis.from_url(settings.REDIS_URL)
    try:
        await client.publish(pubsub_channel, serialize({"type": "probe", "n": 1}))
        received = await layer.receive(channel)
    finally:
        await client.aclose()
        await layer.group_discard("conversation.internals", channel)
    assert received == {"type": "probe", "n": 1}


def test_no_publisher_is_offered_for_a_layer_that_is_not_ours():
    assert group_publisher(object(), "conversation.x") is None
