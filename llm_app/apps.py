from django.apps import AppConfig


class LlmAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "llm_app"

    def ready(self) -> None:
        # messages_app reaches the generator only through this registration (one-way imports).
        from llm_app.services import LLMReplyEngine
        from messages_app.replies import engine_register

        engine_register(LLMReplyEngine())
