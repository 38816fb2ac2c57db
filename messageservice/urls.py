"""Top-level routes: the chat page, the API, its schema and docs, admin, health, metrics."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from analytics_app.pages import dashboard_page
from messages_app.media import media_file
from messages_app.pages import chat_page
from messageservice import health, metrics

urlpatterns = [
    path("", chat_page, name="chat"),
    path("analytics/", dashboard_page, name="analytics-dashboard"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/analytics/", include("analytics_app.urls")),  # Issue 10: analytics
    path("api/v1/", include("messages_app.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("django-rq/", include("django_rq.urls")),
    path("health", health.health, name="health"),
    path("ready", health.ready, name="ready"),
    # Answered by metrics.HttpMetricsMiddleware before host validation; the route names it.
    path("metrics", metrics.metrics_view, name="metrics"),
    # Uploaded avatars, when default_storage is a FileSystemStorage (messages_app.media).
    path(f"{settings.MEDIA_URL.strip('/')}/<path:name>", media_file, name="media"),
]
