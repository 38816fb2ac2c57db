from django.apps import AppConfig
from django.db.models.signals import post_migrate


class MessagesAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "messages_app"

    def ready(self) -> None:
        # The queue of the message processor (rq), kept off the websocket consumer's imports.
        from messages_app import jobs, postprocess

        # Registered on import: the user-model receivers and the OpenAPI auth scheme.
        from messages_app.accounts import schema, signals  # noqa: F401

        postprocess.enqueuer_register(jobs.enqueue_post_process)
        from messages_app.search import after_migrate

        # Issue 10: search. SQLite loses the search triggers when a migration rebuilds the
        # message table; put them back after every migrate.
        post_migrate.connect(after_migrate, sender=self, dispatch_uid="messages_app.search")
