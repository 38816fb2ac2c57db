"""ASGI entry point for daphne: HTTP through Django, websockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messageservice.settings")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from messages_app.middleware import TicketAuthMiddleware  # noqa: E402
from messages_app.routing import websocket_urlpatterns  # noqa: E402
from messageservice import logs, request_limits  # noqa: E402

# Body and websocket message limits inside daphne, before anything is buffered.
request_limits.install()

application = ProtocolTypeRouter(
    {
        # Issue 10: logs. The request id on every line of the exchange (docs/logging.md).
        "http": logs.RequestIdASGIMiddleware(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(TicketAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
