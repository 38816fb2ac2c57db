"""Content safety: categories and verdicts, the client the service calls, and the safety worker.

Only the safety worker (`manage.py safety_worker`) loads a classifier; daphne and the llm worker
import `messages_app.safety.client`, which talks to it over Redis and imports no model code.
"""
