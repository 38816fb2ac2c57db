"""Settings for Message Service, read from the environment (django-environ) with the seed's names.

Every variable is listed and explained in `.env.example`. Defaults give the embedded run:
SQLite, the embedded Redis on 8006 and an OpenAI-compatible LLM server on 8005.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from datetime import timedelta
from pathlib import Path

import django_stubs_ext
import environ
from django.core.exceptions import ImproperlyConfigured

from messageservice import redis_clients

# Lets generic classes such as ModelAdmin[Character] be subscripted at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    # Only then: django-environ logs its absence, before LOGGING is set up (daphne: plain text).
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Secrets as files (Docker Swarm / Kubernetes secret mounts): a secret whose env var is unset is
# read from the file named by <NAME>_FILE, else from <SECRETS_DIR>/<lower name> (/run/secrets,
# where docker-compose.staging.yml mounts them). The env var, when set, always wins.
SECRET_ENV_NAMES = (
    "DJANGO_SECRET_KEY",
    "JWT_SECRET_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "METRICS_TOKEN",
    "LLM_API_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
)


def load_secret_files(environment: MutableMapping[str, str], directory: Path) -> None:
    for name in SECRET_ENV_NAMES:
        if name in environment:
            continue
        path = Path(environment[f"{name}_FILE"]) if f"{name}_FILE" in environment else None
        if path is None and (directory / name.lower()).is_file():
            path = directory / name.lower()
        if path is not None:
            try:
                environment[name] = path.read_text().strip()
            except OSError as exc:
                raise ImproperlyConfigured(f"{name}: cannot read the secret file {path}") from exc


load_secret_files(os.environ, Path(env.str("SECRETS_DIR", default="/run/secrets")))

INSECURE_DEFAULT_KEY = "insecure-dev-key-change-me-0123456789abcdef0123456789"
# Keys that have been published (in this repository's defaults, examples and build steps):
# whoever knows them can sign a session or a token for any user, so they are refused, as is
# any key under 32 characters, whenever DEBUG is off.
PUBLISHED_KEYS = frozenset(
    {
        INSECURE_DEFAULT_KEY,
        "change-me",
        "compose-dev-only-insecure-django-secret-key-change-me",
        "compose-dev-only-insecure-jwt-secret-key-change-me-000",
        "build-only-dummy-secret-key-not-used-at-runtime-000000",
        "build-only-dummy-jwt-key-not-used-at-runtime-0000000000",
    }
)

# --- Service -------------------------------------------------------------------------------
SERVICE_NAME: str = env.str("SERVICE_NAME", default="message-service")
PORT: int = env.int("PORT", default=8004)
LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO").upper()
# Unset means production: DEBUG off and real keys required. Local runs say development.
ENVIRONMENT: str = env.str("ENVIRONMENT", default="production")
DEBUG: bool = env.bool("DEBUG", default=ENVIRONMENT == "development")
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

SECRET_KEY: str = env.str("DJANGO_SECRET_KEY", default=INSECURE_DEFAULT_KEY)
JWT_SECRET_KEY: str = env.str("JWT_SECRET_KEY", default=INSECURE_DEFAULT_KEY)
# Longest lifetime (exp - iat) accepted on a token of the external auth service.
JWT_EXTERNAL_MAX_LIFETIME_MINUTES: int = env.int("JWT_EXTERNAL_MAX_LIFETIME_MINUTES", default=60)

if env.str("MONGODB_URL", default=""):
    raise ImproperlyConfigured(
        "MONGODB_URL is set, but Message Service does not use MongoDB. "
        "Set DATABASE_URL instead (postgres://user:pass@host:5432/db in production; "
        "SQLite is the default for local runs) and unset MONGODB_URL."
    )

if not DEBUG:
    for _name, _value in (("DJANGO_SECRET_KEY", SECRET_KEY), ("JWT_SECRET_KEY", JWT_SECRET_KEY)):
        if _value in PUBLISHED_KEYS or len(_value) < 32:
            raise ImproperlyConfigured(
                f"{_name} must be set to a secret of at least 32 characters whenever DEBUG is "
                f"off (ENVIRONMENT={ENVIRONMENT}); the published development keys are refused. "
                "For a local run set ENVIRONMENT=development."
            )
if ENVIRONMENT == "production" and DEBUG:
    raise ImproperlyConfigured("DEBUG must be false when ENVIRONMENT=production.")

# --- Data stores ---------------------------------------------------------------------------
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
# Persistent connections: a websocket frame or a worker step reuses its thread's connection
# instead of opening one (a PostgreSQL connect costs milliseconds); checked before reuse.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=300)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes partial replies; with WAL,
    # synchronous=NORMAL is durable against crashes of the processes and skips an fsync per commit.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Unset, every process of the embedded run (`make run`) uses the redis-server that
# `manage.py embedded_redis` starts on 127.0.0.1:8006, a port of its own: never a Redis that
# happens to answer on 6379. Set, that Redis is used (if it is local and does not answer,
# embedded_redis starts one on its port).
# REDIS_URL may name a Sentinel set instead of one Redis:
# redis+sentinel://[[user]:password@]host1:26379[,host2:26379]/service_name[/db] (docs/scaling.md);
# every client below (cache, channel layer, queues, messageservice.redis_clients) follows its
# primary. Redis Cluster is not supported (docs/scaling.md says why).
EMBEDDED_REDIS_URL = "redis://127.0.0.1:8006/0"
REDIS_URL: str = env.str("REDIS_URL", default=EMBEDDED_REDIS_URL)
CACHE_TTL_SECONDS: int = env.int("CACHE_TTL_SECONDS", default=300)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "TIMEOUT": CACHE_TTL_SECONDS,
        "KEY_PREFIX": SERVICE_NAME,
        # Builds a Sentinel pool when REDIS_URL names a Sentinel set.
        "OPTIONS": {"pool_class": redis_clients.CACHE_POOL_CLASS},
    }
}

# Redis pub/sub: a group send is one PUBLISH, received by each daphne process once. Delivery is
# at most once; the token log (llm_app.token_log) is what makes streams complete on resume.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "messageservice.channel_layer.PromptPubSubChannelLayer",
        "CONFIG": {
            "hosts": [redis_clients.channel_layer_host(REDIS_URL)],
            "prefix": f"{SERVICE_NAME}:ch",
        },
    }
}

# --- LLM -----------------------------------------------------------------------------------
LLM_SERVICE_URL: str = env.str("LLM_SERVICE_URL", default="http://127.0.0.1:8005/v1")
DEFAULT_LLM_PROVIDER: str = env.str("DEFAULT_LLM_PROVIDER", default="lmstudio")
DEFAULT_MODEL: str = env.str("DEFAULT_MODEL", default="SmolLM2-135M-Instruct")
LLM_API_KEY: str = env.str("LLM_API_KEY", default="not-needed")
OPENAI_API_KEY: str = env.str("OPENAI_API_KEY", default="")
ANTHROPIC_API_KEY: str = env.str("ANTHROPIC_API_KEY", default="")
# Anthropic API root; empty means the SDK default (the Anthropic cloud).
ANTHROPIC_BASE_URL: str = env.str("ANTHROPIC_BASE_URL", default="")
MAX_TOKENS_PER_REQUEST: int = env.int("MAX_TOKENS_PER_REQUEST", default=2048)
DEFAULT_TEMPERATURE: float = env.float("DEFAULT_TEMPERATURE", default=0.7)
# Chat sampling for characters that set none: a chat-sized reply, and a repetition penalty
# and stop strings so that a small local model ends its turn rather than loop until the
# timeout. Stop strings go to every provider (OpenAI takes the first 4); the penalties only
# where the API has them (repeat_penalty: llama-server, LM Studio; not OpenAI, Anthropic).
DEFAULT_MAX_TOKENS: int = env.int("DEFAULT_MAX_TOKENS", default=200)
DEFAULT_REPEAT_PENALTY: float = env.float("DEFAULT_REPEAT_PENALTY", default=1.1)  # 1 = off
# OpenAI's penalties, -2..2; 0 (off) is not sent.
DEFAULT_FREQUENCY_PENALTY: float = env.float("DEFAULT_FREQUENCY_PENALTY", default=0.0)
DEFAULT_PRESENCE_PENALTY: float = env.float("DEFAULT_PRESENCE_PENALTY", default=0.0)
# A JSON list, as the strings may hold newlines: ["\nUser:", "<|im_end|>"].
DEFAULT_STOP_SEQUENCES: list[str] = env.json(
    "DEFAULT_STOP_SEQUENCES", default=["\nUser:", "<|im_end|>", "<|im_start|>"]
)
LLM_CONTEXT_TOKENS: int = env.int("LLM_CONTEXT_TOKENS", default=8192)
REQUEST_TIMEOUT_SECONDS: float = env.float("REQUEST_TIMEOUT_SECONDS", default=30.0)
MESSAGE_PROCESSING_TIMEOUT: float = env.float("MESSAGE_PROCESSING_TIMEOUT", default=60.0)
MAX_CONCURRENT_LLM_REQUESTS: int = env.int("MAX_CONCURRENT_LLM_REQUESTS", default=10)
MAX_CONCURRENT_REQUESTS: int = env.int("MAX_CONCURRENT_REQUESTS", default=5)
# How often partial reply text is written to the database while a reply streams: by time, so
# the cost is per second whatever the token rate (the token log in Redis holds every delta
# meanwhile). EVERY_TOKENS > 0 also saves every N tokens; 0 (the default) leaves it to time.
PARTIAL_SAVE_INTERVAL_SECONDS: float = env.float("PARTIAL_SAVE_INTERVAL_SECONDS", default=1.0)
PARTIAL_SAVE_EVERY_TOKENS: int = env.int("PARTIAL_SAVE_EVERY_TOKENS", default=0)
# How long a generation's token log stays in Redis after it ends, for late resumes.
TOKEN_LOG_TTL_SECONDS: int = max(600, env.int("TOKEN_LOG_TTL_SECONDS", default=900))
# While waiting for the first token, a heartbeat event every this many seconds keeps proxies
# with idle timeouts from cutting the socket.
GENERATION_HEARTBEAT_SECONDS: float = env.float("GENERATION_HEARTBEAT_SECONDS", default=15.0)
# A running generation (and the global LLM slot it holds) renews a lease this long; an
# expired lease means its worker died.
GENERATION_LEASE_SECONDS: int = env.int("GENERATION_LEASE_SECONDS", default=30)
# How often every worker process looks for replies whose worker died (llm_app.reaper).
REAPER_INTERVAL_SECONDS: float = env.float("REAPER_INTERVAL_SECONDS", default=10.0)
# How long an event that could not be announced (Redis down) is retried in the background.
ANNOUNCE_RETRY_SECONDS: float = env.float("ANNOUNCE_RETRY_SECONDS", default=60.0)
# Retries before the first token (connection error, 429, 5xx), with exponential backoff.
LLM_RETRY_ATTEMPTS: int = env.int("LLM_RETRY_ATTEMPTS", default=2)
LLM_RETRY_BACKOFF_SECONDS: float = env.float("LLM_RETRY_BACKOFF_SECONDS", default=0.5)
# Providers tried in order when the character's provider keeps failing before the first token.
LLM_FALLBACK_PROVIDERS: list[str] = env.list("LLM_FALLBACK_PROVIDERS", default=[])

# --- Messages ------------------------------------------------------------------------------
MAX_MESSAGE_CHARS: int = env.int("MAX_MESSAGE_CHARS", default=8000)
# --- Rate limits and quotas (messages_app.limits: one Lua script, exact under concurrency) ---
# Per user; 0 = unlimited. Sends, edits and regenerations all count. Overrides per user or
# group are set in the admin (LimitOverride).
ENABLE_RATE_LIMITS: bool = env.bool("ENABLE_RATE_LIMITS", default=True)
MAX_MESSAGES_PER_MINUTE: int = env.int("MAX_MESSAGES_PER_MINUTE", default=1000)
MAX_MESSAGES_PER_HOUR: int = env.int("MAX_MESSAGES_PER_HOUR", default=10000)
MAX_MESSAGES_PER_DAY: int = env.int("MAX_MESSAGES_PER_DAY", default=100000)
# Replies of one user queued or streaming at once.
MAX_REPLIES_IN_FLIGHT: int = env.int("MAX_REPLIES_IN_FLIGHT", default=5)
# A reply's slot in flight expires this long after MESSAGE_PROCESSING_TIMEOUT, should its end
# never release it.
RATE_LIMIT_SLOT_MARGIN_SECONDS: float = env.float("RATE_LIMIT_SLOT_MARGIN_SECONDS", default=60.0)
# Prompt plus completion tokens per user per UTC day.
DAILY_TOKEN_QUOTA: int = env.int("DAILY_TOKEN_QUOTA", default=1_000_000)
# Wrong passwords before a username or a client address is refused for LOGIN_COOLOFF_SECONDS.
# Failures count within LOGIN_COOLOFF_SECONDS of the last one (django-axes, in the Redis
# cache; messages_app.accounts.throttle). Token endpoint, session login and admin login alike.
LOGIN_FAILURE_LIMIT: int = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_COOLOFF_SECONDS: int = env.int("LOGIN_COOLOFF_SECONDS", default=900)
# Reverse proxies (addresses or networks) whose X-Forwarded-For is believed for the client
# address. Empty: the TCP peer is the client. Behind a load balancer or ingress, name it, or
# every client shares its address (and its login throttle).
TRUSTED_PROXIES: list[str] = env.list("TRUSTED_PROXIES", default=[])
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_CACHE = "default"
# Two rules: a username's failures, and an address's; either over the limit locks.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = "messages_app.accounts.throttle.failure_limit"
AXES_COOLOFF_TIME = "messages_app.accounts.throttle.cooloff"
AXES_USERNAME_CALLABLE = "messages_app.accounts.throttle.counter_username"
AXES_CLIENT_IP_CALLABLE = "messages_app.accounts.throttle.client_address"
AXES_LOCKOUT_CALLABLE = "messages_app.accounts.throttle.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
# A lockout lasts LOGIN_COOLOFF_SECONDS from the failure that caused it: attempts during it
# are refused without extending it, so Retry-After is exact.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A successful login clears its username's counter (throttle.PasswordBackend), never the
# address's: one's own account must not reset the count of guesses at others'.
AXES_RESET_ON_SUCCESS = False
AXES_ENABLE_ADMIN = False  # the cache handler keeps nothing in the database to show
AXES_VERBOSE = False
# What a user who is not staff may put a character on ("" = the service default).
CHARACTER_ALLOWED_PROVIDERS: list[str] = env.list(
    "CHARACTER_ALLOWED_PROVIDERS", default=["", "lmstudio", "openai_compatible"]
)
CHARACTER_ALLOWED_MODELS: list[str] = env.list(
    "CHARACTER_ALLOWED_MODELS", default=["", DEFAULT_MODEL]
)

# --- Content safety (messages_app.safety; the classifier runs in the safety worker) ---------
ENABLE_CONTENT_FILTERING: bool = env.bool("ENABLE_CONTENT_FILTERING", default=True)
# Scores run 0..1; a category at or over its threshold flags the text.
SAFETY_THRESHOLD: float = env.float("SAFETY_THRESHOLD", default=0.7)
# Per category, JSON: {"harassment": 0.8, "sexual/minors": 0.2}.
SAFETY_CATEGORY_THRESHOLDS: dict[str, float] = env.json("SAFETY_CATEGORY_THRESHOLDS", default={})
# local (offline classifier), openai (moderation endpoint), llama_guard (Llama Guard 3 on an
# OpenAI-compatible server).
SAFETY_BACKEND: str = env.str("SAFETY_BACKEND", default="local")
# A user message over the threshold: block (422, kept for review, no reply) or flag (sent on,
# queued for review).
SAFETY_INPUT_ACTION: str = env.str("SAFETY_INPUT_ACTION", default="block")
# A streaming reply is checked at sentence ends and at least every this many deltas.
SAFETY_OUTPUT_CHECK_TOKENS: int = env.int("SAFETY_OUTPUT_CHECK_TOKENS", default=32)
# How long a check may take; past it, or with the safety worker unreachable, an input check
# follows SAFETY_ON_ERROR: reject (503 safety_unavailable, nothing saved) or allow.
SAFETY_TIMEOUT_SECONDS: float = env.float("SAFETY_TIMEOUT_SECONDS", default=2.0)
SAFETY_ON_ERROR: str = env.str("SAFETY_ON_ERROR", default="reject")
# openai backend: OPENAI_API_KEY, this base URL ("" = the SDK's) and model.
SAFETY_OPENAI_BASE_URL: str = env.str("SAFETY_OPENAI_BASE_URL", default="")
SAFETY_OPENAI_MODEL: str = env.str("SAFETY_OPENAI_MODEL", default="omni-moderation-latest")
# llama_guard backend: an OpenAI-compatible server that serves Llama Guard 3.
SAFETY_LLAMA_GUARD_URL: str = env.str("SAFETY_LLAMA_GUARD_URL", default="http://127.0.0.1:8007/v1")
SAFETY_LLAMA_GUARD_MODEL: str = env.str("SAFETY_LLAMA_GUARD_MODEL", default="llama-guard-3-1b")
SAFETY_LLAMA_GUARD_API_KEY: str = env.str("SAFETY_LLAMA_GUARD_API_KEY", default="not-needed")
# Confirmed violations add to a user's score; at each threshold the user is banned for the
# time given (s, m, h, d, or "forever"): "3=1d,6=7d,10=forever".
VIOLATION_BAN_THRESHOLDS: str = env.str("VIOLATION_BAN_THRESHOLDS", default="3=1d,6=7d,10=forever")

# Issue 10: message processor (queue `messages`, docs/postprocessing.md)
# Where replies are checked: inline (live checks while they stream; a reply whose end no check
# saw is reviewed after it ended) or after (no live checks: the message processor checks each
# finished reply and blocks an offending one after the fact).
SAFETY_OUTPUT_MODE: str = env.str("SAFETY_OUTPUT_MODE", default="inline")
if SAFETY_OUTPUT_MODE not in ("inline", "after"):
    raise ImproperlyConfigured("SAFETY_OUTPUT_MODE must be inline or after.")
# A conversation without a title gets one from the LLM after its first completed reply (else
# its first message, shortened): at most this long a wait, this many tokens.
CONVERSATION_AUTO_TITLES: bool = env.bool("CONVERSATION_AUTO_TITLES", default=True)
TITLE_TIMEOUT_SECONDS: float = env.float("TITLE_TIMEOUT_SECONDS", default=10.0)
TITLE_MAX_TOKENS: int = env.int("TITLE_MAX_TOKENS", default=24)
# A post-processing job that fails (safety worker, database or Redis unavailable) is tried
# again after each of these delays, in seconds (RQ Retry; the workers schedule it themselves).
POSTPROCESS_RETRY_INTERVALS: list[int] = [
    int(value) for value in env.list("POSTPROCESS_RETRY_INTERVALS", default=["5", "30", "120"])
]

# Issue 10: analytics. Events the analytics worker takes per batch (analytics_app.worker).
BATCH_SIZE_FOR_ANALYTICS: int = env.int("BATCH_SIZE_FOR_ANALYTICS", default=100)
# The fill pass closes an hour this long after it ends (its replies have ended by then), and
# runs this often (docs/analytics.md).
ANALYTICS_FILL_DELAY_SECONDS: int = env.int("ANALYTICS_FILL_DELAY_SECONDS", default=900)
ANALYTICS_FILL_INTERVAL_SECONDS: float = env.float("ANALYTICS_FILL_INTERVAL_SECONDS", default=60.0)
WS_TICKET_TTL_SECONDS: int = env.int("WS_TICKET_TTL_SECONDS", default=30)

# --- Issue 10: metrics (messageservice.metrics; docs/metrics.md) ----------------------------
# The scrape credential: Prometheus sends `Authorization: Bearer <METRICS_TOKEN>` to daphne's
# /metrics and to every worker's exporter. Unset: /metrics is open when DEBUG, a 404 otherwise,
# and workers start no exporter unless DEBUG.
METRICS_TOKEN: str = env.str("METRICS_TOKEN", default="")
# A worker process (rqworker, safety_worker, analytics_worker) serves its own metrics on this
# port (0: none). Processes sharing a host need distinct ports (Procfile: 9090-9093).
METRICS_PORT: int = env.int("METRICS_PORT", default=9090)
METRICS_ADDR: str = env.str("METRICS_ADDR", default="0.0.0.0")

# --- Request limits (messageservice.request_limits, enforced inside daphne) ----------------
# Largest HTTP request body, in bytes. A bigger one gets 413 as soon as its headers (or, when
# chunked, its first bytes over the limit) arrive: it is never buffered or parsed.
MAX_REQUEST_BODY_BYTES: int = env.int("MAX_REQUEST_BODY_BYTES", default=1024 * 1024)
# Largest websocket message (and frame) a client may send, in bytes. A bigger one closes the
# socket with 1009 (message too big) when its frame header arrives, before its payload.
WS_MAX_MESSAGE_BYTES: int = env.int("WS_MAX_MESSAGE_BYTES", default=64 * 1024)

# --- Uploads: avatars and character cards (issue 12) ---------------------------------------
# Uploaded files (avatars) go through default_storage: a FileSystemStorage in MEDIA_ROOT,
# served at MEDIA_URL by messages_app.media (mount a volume there when the root filesystem
# is read-only). Object storage would serve storage.url() itself.
MEDIA_ROOT: str = env.str("MEDIA_ROOT", default=str(BASE_DIR / "media"))
MEDIA_URL = "/media/"
# Largest avatar upload, in bytes (400 too_large above it). It is re-encoded to at most
# 512x512 without metadata (messages_app.avatars).
AVATAR_MAX_BYTES: int = env.int("AVATAR_MAX_BYTES", default=2 * 1024 * 1024)
# Largest character card upload (PNG or JSON), in bytes, and largest text chunk in a card PNG.
CARD_MAX_BYTES: int = env.int("CARD_MAX_BYTES", default=8 * 1024 * 1024)
CARD_MAX_CHUNK_BYTES: int = env.int("CARD_MAX_CHUNK_BYTES", default=4 * 1024 * 1024)
# Most pixels an uploaded image (avatar or card PNG) may declare before it is decoded
# (decompression bombs: 400 image_too_large).
IMAGE_MAX_PIXELS: int = env.int("IMAGE_MAX_PIXELS", default=4096 * 4096)

# --- Django --------------------------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_rq",
    "messages_app",
    "llm_app",
    "analytics_app",
    "axes",
]

AUTHENTICATION_BACKENDS = [
    # Refuses locked usernames and addresses before any password is checked.
    "messages_app.accounts.throttle.LoginThrottleBackend",
    "messages_app.accounts.throttle.PasswordBackend",
]

MIDDLEWARE = [
    # Issue 10: logs. First, so that every line of the request, and its response, carry the
    # request id (X-Request-ID).
    "messageservice.logs.request_id_middleware",
    # First: counts every response (http_requests_total) and answers GET /metrics itself.
    "messageservice.metrics.HttpMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a locked-out login into the 429 of messages_app.accounts.throttle.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "messageservice.urls"
ASGI_APPLICATION = "messageservice.asgi.application"
WSGI_APPLICATION = "messageservice.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)

# --- REST framework ------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "messages_app.accounts.auth.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "messages_app.permissions.NotBanned",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "messages_app.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": JWT_SECRET_KEY,
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "LEEWAY": 5,
    # `sub` carries the username, the same claim the external auth service signs.
    "USER_ID_FIELD": "username",
    "USER_ID_CLAIM": "sub",
    "AUTH_HEADER_TYPES": ("Bearer",),
    # Our tokens, and the auth service's; messages_app.accounts.auth says how they differ.
    "AUTH_TOKEN_CLASSES": (
        "messages_app.accounts.auth.ServiceAccessToken",
        "messages_app.accounts.auth.ExternalAccessToken",
    ),
    "TOKEN_OBTAIN_SERIALIZER": "messages_app.accounts.auth.TokenObtainPairSerializer",
    "TOKEN_REFRESH_SERIALIZER": "messages_app.accounts.auth.TokenRefreshSerializer",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Message Service API",
    "DESCRIPTION": "AI character chat: characters, conversations, messages and generations.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "messages_app.openapi.document_bans",
    ],
}

# --- Queues --------------------------------------------------------------------------------
RQ_QUEUES = {
    # URL, or SENTINELS and MASTER_NAME when REDIS_URL names a Sentinel set.
    name: redis_clients.rq_queue_config(
        REDIS_URL, DEFAULT_TIMEOUT=int(MESSAGE_PROCESSING_TIMEOUT) + 60
    )
    for name in ("llm", "messages", "analytics", "default")
}

# `python manage.py rqworker llm` runs this class: many generations per process, a global cap.
RQ = {"WORKER_CLASS": "llm_app.worker.GenerationWorker"}

# --- Logging -------------------------------------------------------------------------------
# Issue 10: logs. json: one JSON object per line (messageservice.logs, docs/logging.md), the
# default in production; plain: one human line per record. Either way every record carries
# the request id and, on a reply's path, the generation id.
LOG_FORMAT: str = env.str("LOG_FORMAT", default="json" if ENVIRONMENT == "production" else "plain")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, not {LOG_FORMAT!r}.")
LOGGING_CONFIG = "messageservice.logs.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "messageservice.logs.ContextFilter", "service": SERVICE_NAME}},
    "formatters": {
        "console": {
            "()": (
                "messageservice.logs.JsonFormatter"
                if LOG_FORMAT == "json"
                else "messageservice.logs.PlainFormatter"
            )
        },
    },
    "handlers": {
        "console": {
            "class": "messageservice.logs.JsonStreamHandler"
            if LOG_FORMAT == "json"
            else "logging.StreamHandler",
            "formatter": "console",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's default logging gives these handlers of their own (plain text, some only
        # with DEBUG on); none here, so that their records reach the console handler above.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.server": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.db.backends": {"level": "INFO"},
        "rq.worker": {"level": LOG_LEVEL},
        # daphne's access lines (JSON mode routes them here): written whatever LOG_LEVEL, as
        # daphne writes them in plain mode; `daphne -v 0` turns them off in both.
        "daphne.access": {"level": "INFO"},
    },
}
