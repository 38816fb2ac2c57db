"""Analytics routes, under /api/v1/analytics/ (messageservice.urls)."""

from django.urls import path

from analytics_app import apis

urlpatterns = [
    path("usage/", apis.UsageApi.as_view(), name="analytics-usage"),
]
