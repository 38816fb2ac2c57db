"""GET /api/v1/search/messages/: full-text search of the caller's own messages."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from messages_app import search
from messages_app.openapi import ErrorSerializer
from messages_app.selectors import siblings_of
from messages_app.serializers import MessageSerializer


class SearchConversationSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    title = serializers.CharField()
    character_name = serializers.CharField()


class SearchHitSerializer(serializers.Serializer[Any]):
    message = MessageSerializer()
    conversation = SearchConversationSerializer()
    rank = serializers.FloatField(help_text="Higher is better; comparable within one search.")
    snippet = serializers.CharField(
        help_text="HTML: the message's text around the hits, HTML-escaped, with <mark> around "
        "each hit. Safe to insert as HTML; nothing else of the response is."
    )


class SearchPageSerializer(serializers.Serializer[Any]):
    count = serializers.IntegerField(help_text="Hits in all pages.")
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = SearchHitSerializer(many=True)


def _page_url(request: Request, query: str, page: int, page_size: int) -> str:
    params = urlencode({"q": query, "page": page, "page_size": page_size})
    return request.build_absolute_uri(f"{request.path}?{params}")


class MessageSearchApi(APIView):
    """Search the caller's own messages (user and assistant messages of the conversations
    they own) that are completed, failed or cancelled; blocked ones never."""

    @extend_schema(
        operation_id="search_messages",
        parameters=[
            OpenApiParameter(
                "q",
                OpenApiTypes.STR,
                required=True,
                description=f"1..{search.MAX_QUERY_LENGTH} characters. Words are ANDed; "
                '"a phrase" in double quotes, `or` between words, `-word` excludes.',
            ),
            OpenApiParameter("page", OpenApiTypes.INT, description=f"1..{search.MAX_PAGE}."),
            OpenApiParameter(
                "page_size",
                OpenApiTypes.INT,
                description=f"1..{search.MAX_PAGE_SIZE}, default {search.DEFAULT_PAGE_SIZE}.",
            ),
        ],
        responses={
            200: SearchPageSerializer,
            400: OpenApiResponse(
                response=ErrorSerializer,
                description="`invalid`: q empty or longer than "
                f"{search.MAX_QUERY_LENGTH} characters, or a bad page or page_size "
                "(details: `param`).",
            ),
        },
    )
    def get(self, request: Request) -> Response:
        query = search.search_query_clean(request.query_params.get("q"))
        page, page_size = search.search_page_params(
            request.query_params.get("page"), request.query_params.get("page_size")
        )
        result = search.messages_search(
            user=request.user, query=query, page=page, page_size=page_size
        )
        messages = [hit.message for hit in result.hits]
        siblings = siblings_of(messages) if messages else {}
        results = [
            {
                "message": MessageSerializer(hit.message, context={"siblings": siblings}).data,
                "conversation": {
                    "id": hit.message.conversation_id,
                    "title": hit.message.conversation.title,
                    "character_name": hit.message.conversation.character.name,
                },
                "rank": hit.rank,
                "snippet": hit.snippet,
            }
            for hit in result.hits
        ]
        return Response(
            {
                "count": result.count,
                "next": _page_url(request, query, page + 1, page_size) if result.has_next else None,
                "previous": _page_url(request, query, page - 1, page_size) if page > 1 else None,
                "results": results,
            }
        )
