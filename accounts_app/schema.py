"""OpenAPI: JWTAuthentication is described as simplejwt's bearer scheme. Imported by
AccountsAppConfig.ready(), which is what registers the extension."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme


class JWTAuthenticationScheme(SimpleJWTScheme):
    target_class = "accounts_app.auth.JWTAuthentication"
