"""Thin DRF views: validate with an input serializer, call one service, render the output."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from messages_app import avatars, cards, characters, exports, moderation, selectors, services
from messages_app.errors import InvalidInput, TooLarge
from messages_app.models import Character, Conversation
from messages_app.openapi import RATE_LIMIT_HEADERS, ErrorSerializer, send_responses
from messages_app.safety_flow import input_wait_and_settle
from messages_app.serializers import (
    CancelResultSerializer,
    CharacterOptionsSerializer,
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


class FormatIsAParameter(DefaultContentNegotiation):
    """`?format=` of the export endpoints names the file's format, not a DRF renderer: always
    answer (errors) with the view's first renderer, JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        first = next(iter(renderers))
        return first, first.media_type


def _download(content: bytes | str, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _format_param(request: Request, allowed: tuple[str, ...]) -> str:
    value = request.query_params.get("format", allowed[0])
    if value not in allowed:
        raise InvalidInput(
            f"format must be one of: {', '.join(allowed)}.",
            details={"param": "format", "allowed": list(allowed)},
        )
    return value


def _upload(request: Request, *, max_bytes: int) -> Any:
    upload = request.FILES.get("file")
    if upload is None:
        raise InvalidInput(
            "Send the file as the multipart field `file`.", details={"param": "file"}
        )
    if upload.size > max_bytes:
        raise TooLarge(
            f"The file is larger than {max_bytes} bytes.",
            details={"max_bytes": max_bytes, "bytes": upload.size},
        )
    return upload


_FILE_UPLOAD = {
    "multipart/form-data": inline_serializer("FileUpload", {"file": serializers.FileField()})
}


_STORAGE_UNAVAILABLE = OpenApiResponse(
    ErrorSerializer,
    description="`storage_unavailable`: the image could not be stored (nothing was saved).",
)


def _errors(description: str) -> dict[int, Any]:
    return {
        400: OpenApiResponse(ErrorSerializer, description=description),
        404: OpenApiResponse(ErrorSerializer, description="`not_found`."),
    }


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
        avatars.avatar_delete(character=instance)
        instance.delete()

    def _render(self, character: Character, status_code: int = status.HTTP_200_OK) -> Response:
        return Response(self.get_serializer(character).data, status=status_code)

    @extend_schema(
        request=_FILE_UPLOAD,
        responses={
            200: CharacterSerializer,
            204: None,
            **_errors(
                "`invalid_image`: not a PNG, JPEG, WebP or GIF Pillow can read whole; "
                "`image_too_large`: more than IMAGE_MAX_PIXELS pixels."
            ),
            403: OpenApiResponse(ErrorSerializer, description="Not the owner (or staff)."),
            413: OpenApiResponse(
                ErrorSerializer, description="`too_large`: the file is over AVATAR_MAX_BYTES."
            ),
            503: _STORAGE_UNAVAILABLE,
        },
        description="POST multipart `file`: the character's new avatar, re-encoded (WebP, at "
        "most 512x512, no metadata); 200 with the character. DELETE: no avatar; 204.",
    )
    @action(
        detail=True,
        methods=["post", "delete"],
        url_path="avatar",
        parser_classes=[MultiPartParser, FormParser],
    )
    def avatar(self, request: Request, pk: str) -> Response:
        character = self.get_object()
        self._check_owner(character)
        if request.method == "DELETE":
            characters.character_avatar_delete(character=character)
            return Response(status=status.HTTP_204_NO_CONTENT)
        upload = _upload(request, max_bytes=settings.AVATAR_MAX_BYTES)
        content = avatars.avatar_from_upload(upload)
        characters.character_avatar_set(character=character, actor=request.user, content=content)
        character.refresh_from_db()
        return self._render(character)

    @extend_schema(
        responses=CharacterOptionsSerializer,
        description="The model settings the caller may give a character: providers, models "
        "(null: any, for staff), and the temperature and max_tokens bounds and defaults.",
    )
    @action(detail=False, methods=["get"], url_path="options")
    def llm_options(self, request: Request) -> Response:
        return Response(characters.character_llm_options(user=request.user))

    @extend_schema(
        request=_FILE_UPLOAD,
        responses={
            201: CharacterSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="`not_a_card` (neither PNG nor JSON), `no_card_data` (a PNG "
                "without a `chara` or `ccv3` chunk), `bad_card` (bad base64, JSON or card "
                "fields; `details` say which), `image_too_large` (more than IMAGE_MAX_PIXELS "
                "pixels: a decompression bomb), `invalid` (a provider/model not allowed).",
            ),
            413: OpenApiResponse(
                ErrorSerializer,
                description="`too_large`: the file is over CARD_MAX_BYTES, or a text chunk "
                "over CARD_MAX_CHUNK_BYTES.",
            ),
            503: _STORAGE_UNAVAILABLE,
        },
        description="Import a character card (V1, V2 `chara`, V3 `ccv3`, which wins; PNG or "
        "JSON) as a new private character of the caller; a PNG's picture becomes its avatar.",
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        parser_classes=[MultiPartParser, FormParser],
    )
    def import_card(self, request: Request) -> Response:
        upload = _upload(request, max_bytes=settings.CARD_MAX_BYTES)
        card = cards.card_read(upload.read(settings.CARD_MAX_BYTES + 1))
        serializer = CharacterSerializer(data=card.fields, context={"request": request})
        if not serializer.is_valid():
            raise InvalidInput(
                "The card's fields are not valid here.",
                code="bad_card",
                details=dict(serializer.errors),
            )
        character = characters.character_import(
            owner=request.user,
            data=serializer.validated_data,
            extras=card.extras,
            image=card.image,
        )
        return self._render(character, status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "format", OpenApiTypes.STR, enum=["png", "json"], description="Default png."
            )
        ],
        responses={
            (200, "image/png"): OpenApiResponse(
                OpenApiTypes.BINARY, description="The card PNG: `chara` (V2) and `ccv3` (V3)."
            ),
            (200, "application/json"): OpenApiResponse(
                OpenApiTypes.OBJECT, description="The card as JSON (chara_card_v3)."
            ),
            403: OpenApiResponse(ErrorSerializer, description="Not the owner (or staff)."),
            **_errors("`invalid`: an unknown format."),
        },
        description="Download the character as a card (Content-Disposition: attachment). Only "
        "its owner and staff may: a public character's prompt is its owner's work.",
    )
    @action(
        detail=True,
        methods=["get"],
        url_path="export",
        content_negotiation_class=FormatIsAParameter,
        renderer_classes=[JSONRenderer],
    )
    def export(self, request: Request, pk: str) -> HttpResponse:
        character = self.get_object()
        user = request.user
        if character.owner_id != user.pk and not user.is_staff:
            raise PermissionDenied("Only the owner can export this character.")
        kind = _format_param(request, ("png", "json"))
        if kind == "json":
            body = json.dumps(cards.card_json(character), ensure_ascii=False, indent=2)
            return _download(
                body,
                content_type="application/json; charset=utf-8",
                filename=cards.card_filename(character, "json"),
            )
        return _download(
            cards.card_png(character),
            content_type="image/png",
            filename=cards.card_filename(character, "png"),
        )


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
        q = self.request.query_params.get("q", "") if self.action == "list" else ""
        if len(q) > 200:
            raise InvalidInput("q is at most 200 characters.", details={"param": "q"})
        return selectors.conversations_list(user=self.request.user, q=q)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "q",
                OpenApiTypes.STR,
                description="Only conversations whose title or character name contains this "
                "(ignoring case); at most 200 characters.",
            )
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

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

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "format",
                OpenApiTypes.STR,
                enum=["markdown", "jsonl"],
                description="Default markdown.",
            )
        ],
        responses={
            (200, "text/markdown"): OpenApiResponse(
                OpenApiTypes.STR, description="The active branch as Markdown."
            ),
            (200, "application/jsonl"): OpenApiResponse(
                OpenApiTypes.STR,
                description="The active branch in SillyTavern's JSONL chat format: a header "
                "line, then one line per message (swipes for replies with siblings).",
            ),
            **_errors("`invalid`: an unknown format."),
        },
        description="Download the conversation's active branch (Content-Disposition: attachment).",
    )
    @action(
        detail=True,
        methods=["get"],
        url_path="export",
        content_negotiation_class=FormatIsAParameter,
        renderer_classes=[JSONRenderer],
    )
    def export(self, request: Request, pk: str) -> HttpResponse:
        conversation = selectors.conversation_get(user=request.user, conversation_id=int(pk))
        kind = _format_param(request, ("markdown", "jsonl"))
        if kind == "jsonl":
            return _download(
                exports.chat_jsonl(conversation),
                content_type="application/jsonl; charset=utf-8",
                filename=exports.chat_filename(conversation, "jsonl"),
            )
        return _download(
            exports.chat_markdown(conversation),
            content_type="text/markdown; charset=utf-8",
            filename=exports.chat_filename(conversation, "md"),
        )


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
