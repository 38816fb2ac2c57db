from django.apps import AppConfig


class MessagesAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "messages_app"

    def ready(self) -> None:
        # The queue of the message processor (rq), kept off the websocket consumer's imports.
        from messages_app import jobs, postprocess

        # Registered on import: the user-model receivers and the OpenAPI auth scheme.
        from messages_app.accounts import schema, signals  # noqa: F401

        postprocess.enqueuer_register(jobs.enqueue_post_process)
