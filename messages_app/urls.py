"""REST routes under /api/v1/."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from messages_app import apis, search_apis

router = DefaultRouter()
router.register("characters", apis.CharacterViewSet, basename="character")
router.register("conversations", apis.ConversationViewSet, basename="conversation")

urlpatterns = [
    path("auth/token/", TokenObtainPairView.as_view(), name="token-obtain"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="token-refresh"),
    path("ws-tickets/", apis.WsTicketApi.as_view(), name="ws-ticket"),
    path(
        "conversations/<int:conversation_id>/messages/",
        apis.ConversationMessagesApi.as_view(),
        name="conversation-messages",
    ),
    path("messages/<int:message_id>/", apis.MessageApi.as_view(), name="message"),
    path(
        "messages/<int:message_id>/regenerate/",
        apis.MessageRegenerateApi.as_view(),
        name="message-regenerate",
    ),
    path(
        "generations/<int:generation_id>/cancel/",
        apis.GenerationCancelApi.as_view(),
        name="generation-cancel",
    ),
    path(
        "messages/<int:message_id>/feedback/",
        apis.MessageFeedbackApi.as_view(),
        name="message-feedback",
    ),
    path(
        "messages/<int:message_id>/report/",
        apis.MessageReportApi.as_view(),
        name="message-report",
    ),
    path("search/messages/", search_apis.MessageSearchApi.as_view(), name="search-messages"),
    path("", include(router.urls)),
]
