"""OpenAPI: JWTAuthentication is described as simplejwt's bearer scheme. Imported by
MessagesAppConfig.ready(), which is what registers the extension."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme


class JWTAuthenticationScheme(SimpleJWTScheme):
    target_class = "messages_app.accounts.auth.JWTAuthentication"
