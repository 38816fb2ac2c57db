"""The usage API: `GET /api/v1/analytics/usage/` (docs/analytics.md, docs/api.md)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics_app import selectors
from analytics_app.serializers import UsageQuerySerializer, UsageSerializer
from messages_app.openapi import ErrorSerializer


class UsageApi(APIView):
    """Usage rollups. Staff see every user's (or one's, with `user`); anyone else only their
    own, whatever `user` says."""

    @extend_schema(
        operation_id="analytics_usage",
        parameters=[
            OpenApiParameter(
                "from",
                OpenApiTypes.STR,
                description="ISO date or datetime, UTC; default 30 days before `to`.",
            ),
            OpenApiParameter(
                "to", OpenApiTypes.STR, description="Exclusive; default the end of today (UTC)."
            ),
            OpenApiParameter(
                "group_by",
                OpenApiTypes.STR,
                description="Comma list of hour|day "
                "(at most one; default day), user, character, model.",
            ),
            OpenApiParameter("user", OpenApiTypes.INT, description="Staff only: one user's rows."),
        ],
        responses={
            200: UsageSerializer,
            400: ErrorSerializer,
        },
        description="Rows are the rollup buckets starting in [from, to), merged by the "
        "group_by keys, ordered by time then keys. 400 `invalid`: a bad date, from >= to, an "
        "unknown or repeated group_by key, hour and day together, hourly ranges over 31 days "
        "or daily ranges over 366 days. Percentiles come from log-spaced histograms (about "
        "±4.4 %).",
    )
    def get(self, request: Request) -> Response:
        params = UsageQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        user = request.user
        user_id = data.get("user") if user.is_staff else user.pk
        query = selectors.UsageQuery(
            start=data["start"],
            end=data["end"],
            interval=data["interval"],
            group_by=data["group_by"],
            user_id=user_id,
        )
        return Response(selectors.usage(query))
