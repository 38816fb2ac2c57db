"""Thin DRF views: validate with an input serializer, call one service, render the output."""

from __future__ import annotations

import base64
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from messages_app import characters, moderation, selectors, services
from messages_app.errors import InvalidInput
from messages_app.models import Character, Conversation
from messages_app.openapi import RATE_LIMIT_HEADERS, ErrorSerializer, send_responses
from messages_app.safety_flow import input_wait_and_settle
from messages_app.serializers import (
    CancelResultSerializer,
    CharacterSerializer,
    ConversationSerializer,
    ConversationUpdateSerializer,
    FeedbackSerializer,
    MessageEditSerializer,
    MessageSendSerializer,
    MessageSerializer,
    RegenerateResultSerializer,
    ReportSerializer,
    SendResultSerializer,
    WsTicketSerializer,
)
from messages_app.tickets import ticket_issue
from messageservice import logs


class ByNamePagination(CursorPagination):
    ordering = ("name", "id")


class ByActivityPagination(CursorPagination):
    ordering = ("-last_activity_at", "-id")


class CharacterViewSet(viewsets.ModelViewSet[Character]):
    """Approved public characters and the caller's own. Only the owner (or staff) may change
    or delete one. Users who are not staff are held to the provider/model allowlist, and their
    public characters wait for a moderator's approval (messages_app.characters)."""

    serializer_class = CharacterSerializer
    pagination_class = ByNamePagination

    def get_queryset(self) -> QuerySet[Character]:
        return selectors.characters_visible_to(self.request.user)

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = characters.character_create(
            owner=self.request.user, data=serializer.validated_data
        )

    def _check_owner(self, character: Character) -> None:
        user = self.request.user
        if character.owner_id != user.pk and not user.is_staff:
            raise PermissionDenied("Only the owner can change this character.")

    def perform_update(self, serializer: Any) -> None:
        self._check_owner(serializer.instance)
        serializer.instance = characters.character_update(
            character=serializer.instance, actor=self.request.user, data=serializer.validated_data
        )

    def perform_destroy(self, instance: Character) -> None:
        self._check_owner(instance)
        if instance.conversations.exists():
            instance.is_public = False
            instance.save(update_fields=["is_public"])
            return
        instance.delete()


class ConversationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[Conversation],
):
    """The caller's conversations, newest activity first. Another user's answer 404."""

    serializer_class = ConversationSerializer
    pagination_class = ByActivityPagination

    def get_queryset(self) -> QuerySet[Conversation]:
        return selectors.conversations_of(self.request.user)

    def create(self, request: Request) -> Response:
        serializer = ConversationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        character = selectors.character_get_visible(
            user=request.user, character_id=serializer.validated_data["character_id"]
        )
        conversation = services.conversation_create(
            owner=request.user,
            character=character,
            title=serializer.validated_data.get("title", ""),
        )
        return Response(ConversationSerializer(conversation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ConversationUpdateSerializer, responses=ConversationSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        conversation = self.get_object()
        serializer = ConversationUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if "title" in serializer.validated_data:
            conversation.title = serializer.validated_data["title"]
            conversation.save(update_fields=["title"])
        if "active_leaf_id" in serializer.validated_data:
            services.conversation_switch_branch(
                conversation=conversation, message_id=serializer.validated_data["active_leaf_id"]
            )
        return Response(ConversationSerializer(conversation).data)

    def perform_destroy(self, instance: Conversation) -> None:
        services.conversation_delete(conversation=instance)


def _encode_cursor(message_id: int) -> str:
    return base64.urlsafe_b64encode(f"b:{message_id}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind != "b":
            raise ValueError
        return int(value)
    except ValueError as exc:
        raise InvalidInput("The cursor is not valid.", code="bad_cursor") from exc


class ConversationMessagesApi(APIView):
    """GET the active branch a page at a time; POST a message (202, generation queued)."""

    @extend_schema(
        parameters=[
            OpenApiParameter("cursor", OpenApiTypes.STR, description="From `next`: older page."),
            OpenApiParameter("limit", OpenApiTypes.INT, description="1..200, default 50."),
        ],
        responses=inline_serializer(
            "MessagePage",
            {
                "results": MessageSerializer(many=True),
                "next": serializers.CharField(allow_null=True),
                "previous": serializers.CharField(allow_null=True),
            },
        ),
    )
    def get(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(
            user=request.user, conversation_id=conversation_id
        )
        try:
            limit = int(request.query_params.get("limit", 50))
        except ValueError as exc:
            raise InvalidInput("limit must be an integer.", code="bad_limit") from exc
        if not 1 <= limit <= 200:
            raise InvalidInput("limit must be between 1 and 200.", code="bad_limit")
        cursor = request.query_params.get("cursor")
        before = _decode_cursor(cursor) if cursor else None
        messages, older = selectors.branch_page(
            conversation=conversation, before_id=before, limit=limit
        )
        next_url = None
        if older is not None:
            next_url = request.build_absolute_uri(
                f"{request.path}?limit={limit}&cursor={_encode_cursor(older)}"
            )
        siblings = selectors.siblings_of(messages)
        return Response(
            {
                "results": MessageSerializer(
                    messages, many=True, context={"siblings": siblings}
                ).data,
                "next": next_url,
                "previous": None,
            }
        )

    @extend_schema(
        request=MessageSendSerializer,
        responses=send_responses(SendResultSerializer),
        parameters=[
            OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER),
            *RATE_LIMIT_HEADERS,
        ],
    )
    def post(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(
            user=request.user, conversation_id=conversation_id
        )
        serializer = MessageSendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        client_id = request.headers.get("Idempotency-Key") or data.get("client_id") or ""
        result = services.message_send(
            conversation=conversation,
            author=request.user,
            content=data["content"],
            client_id=client_id,
            parent_id=data.get("parent_id"),
        )
        with logs.bind(generation_id=result.generation_id):
            input_wait_and_settle(
                result.check, user_message=result.user_message, reply=result.assistant_message
            )
        return Response(_send_body(result), status=status.HTTP_202_ACCEPTED)


class MessageApi(APIView):
    """PATCH a user message: its edit starts a new branch (202, a new reply is generated)."""

    @extend_schema(
        request=MessageEditSerializer,
        responses=send_responses(SendResultSerializer),
        parameters=RATE_LIMIT_HEADERS,
    )
    def patch(self, request: Request, message_id: int) -> Response:
        message = selectors.message_get(user=request.user, message_id=message_id)
        serializer = MessageEditSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = services.message_edit(
            message=message, author=request.user, content=serializer.validated_data["content"]
        )
        input_wait_and_settle(
            result.check, user_message=result.user_message, reply=result.assistant_message
        )
        return Response(_send_body(result), status=status.HTTP_202_ACCEPTED)


class MessageRegenerateApi(APIView):
    """POST on an assistant reply: a new alternative reply (a sibling) is generated."""

    @extend_schema(
        request=None,
        responses=send_responses(RegenerateResultSerializer),
        parameters=RATE_LIMIT_HEADERS,
    )
    def post(self, request: Request, message_id: int) -> Response:
        message = selectors.message_get(user=request.user, message_id=message_id)
        assistant, generation_id = services.message_regenerate(message=message)
        return Response(
            {
                "assistant_message": MessageSerializer(assistant).data,
                "generation_id": generation_id,
            },
            status=status.HTTP_202_ACCEPTED,
        )


class GenerationCancelApi(APIView):
    """Stop a generation; the text so far stays and the status becomes `cancelled`.

    202: the reply is cancelled (queued) or its worker was told (streaming; every client then
    gets `generation.cancelled`). 409: it already ended.
    """

    @extend_schema(request=None, responses={202: CancelResultSerializer})
    def post(self, request: Request, generation_id: int) -> Response:
        with logs.bind(generation_id=generation_id):
            reply = selectors.reply_get(user=request.user, generation_id=generation_id)
            message = services.reply_cancel(reply=reply)
        return Response(
            {"generation_id": generation_id, "message": MessageSerializer(message).data},
            status=status.HTTP_202_ACCEPTED,
        )


def _send_body(result: services.SendResult) -> dict[str, Any]:
    return {
        "user_message": MessageSerializer(result.user_message).data,
        "assistant_message": MessageSerializer(result.assistant_message).data,
        "generation_id": result.generation_id,
    }


class MessageFeedbackApi(APIView):
    @extend_schema(request=FeedbackSerializer, responses={201: FeedbackSerializer})
    def post(self, request: Request, message_id: int) -> Response:
        message = selectors.message_get(user=request.user, message_id=message_id)
        serializer = FeedbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        feedback = services.feedback_give(
            message=message,
            user=request.user,
            rating=serializer.validated_data["rating"],
            comment=serializer.validated_data.get("comment", ""),
        )
        return Response(FeedbackSerializer(feedback).data, status=status.HTTP_201_CREATED)


class MessageReportApi(APIView):
    """Report a message you can see to the moderators: one report per user and message."""

    @extend_schema(
        request=ReportSerializer,
        responses={
            201: ReportSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
        },
        description="201: the message is in the moderators' queue. 403 `banned`: the caller "
        "is banned (details: until, permanent, reason). 404: no such message of yours. "
        "409 `already_reported`: you reported it before.",
    )
    def post(self, request: Request, message_id: int) -> Response:
        message = selectors.message_get(user=request.user, message_id=message_id)
        serializer = ReportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        report = moderation.report_create(
            message=message, reporter=request.user, reason=serializer.validated_data["reason"]
        )
        return Response(ReportSerializer(report).data, status=status.HTTP_201_CREATED)


class WsTicketApi(APIView):
    """A single-use ticket for `wss://…/ws/conversations/{id}/?ticket=…`, valid about 30 s."""

    @extend_schema(request=None, responses={201: WsTicketSerializer})
    def post(self, request: Request) -> Response:
        ticket = ticket_issue(user_id=request.user.pk or 0)
        return Response(
            {"ticket": ticket, "expires_in": settings.WS_TICKET_TTL_SECONDS},
            status=status.HTTP_201_CREATED,
        )
