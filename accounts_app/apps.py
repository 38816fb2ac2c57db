from django.apps import AppConfig


class AccountsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts_app"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts_app import schema, signals  # noqa: F401  (they register on import)
