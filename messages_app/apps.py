from django.apps import AppConfig


class MessagesAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "messages_app"

    def ready(self) -> None:
        # Registered on import: the user-model receivers and the OpenAPI auth scheme.
        from messages_app.accounts import schema, signals  # noqa: F401
