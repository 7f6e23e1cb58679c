"""Settings of the project: every environment variable is read here, once.

Each variable is listed with its default in README.md ("Configuration").
Code reads ``django.conf.settings`` at call time so ``override_settings`` works.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), not {value!r}")


def env_int(name: str, default: int, minimum: int = 0) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, not {number}")
    return number


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


# --- Core -------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment (or DEBUG=true for development)."
        )
    SECRET_KEY = "django-insecure-development-only-key-do-not-deploy"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
# Behind TLS: session and CSRF cookies only over HTTPS.
SECURE_COOKIES = env_bool("SECURE_COOKIES", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_COOKIES

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "realtime",
    "chat",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "realtime.csp.ContentSecurityPolicyMiddleware",
]
# Sent as a header on every HTML response (the pages and the admin, which needs no
# more: its scripts and styles are files under /static/). templates/base.html has
# the same policy in a <meta> tag, which cannot hold frame-ancestors.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

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

# --- Database ---------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
# FULL (default): a commit (a 202, a stored message) survives power loss; NORMAL: a process
# crash, but an OS crash or power cut may undo the last commits (bench/RESULTS.md measured both).
SQLITE_SYNCHRONOUS = (env_str("SQLITE_SYNCHRONOUS") or "full").upper()
if SQLITE_SYNCHRONOUS not in {"FULL", "NORMAL"}:
    raise ImproperlyConfigured(
        f"SQLITE_SYNCHRONOUS must be 'full' or 'normal', not {SQLITE_SYNCHRONOUS.lower()!r}")
#: What every SQLite database of the project runs with, however it is named (SQLITE_PATH or
#: DATABASE_URL=sqlite:///...): WAL lets readers run beside the writer; IMMEDIATE takes the
#: write lock at BEGIN, so concurrent writers queue on the busy timeout instead of failing
#: with "database is locked" on a lock upgrade; SQLITE_SYNCHRONOUS is what a commit waits
#: for (docs/security.md, "Durability").
SQLITE_OPTIONS = {
    "init_command": f"PRAGMA journal_mode=WAL; PRAGMA synchronous={SQLITE_SYNCHRONOUS};",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}
if DATABASE_URL:
    # conn_max_age=0: connections opened in the async thread pool are closed after
    # each use instead of lingering in threads that Django cannot reach to close.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            "TEST": {"NAME": env_str("SQLITE_TEST_PATH") or None},
        }
    }
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["OPTIONS"] = {**SQLITE_OPTIONS,
                                       **DATABASES["default"].get("OPTIONS", {})}
#: PostgreSQL: how long a connection attempt may take, and about how long a database host
#: that stopped answering (a dead host, a network partition) may hold a connection before
#: its query fails (TCP keepalives, then libpq's tcp_user_timeout). Without them the
#: operating system waits minutes, and every store of the process waits behind it.
DATABASE_CONNECT_TIMEOUT = env_int("DATABASE_CONNECT_TIMEOUT", 5, minimum=1)
DATABASE_DEAD_PEER_SECONDS = env_int("DATABASE_DEAD_PEER_SECONDS", 30, minimum=2)
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"]["OPTIONS"] = {
        "connect_timeout": DATABASE_CONNECT_TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": DATABASE_DEAD_PEER_SECONDS // 2,
        "keepalives_interval": max(1, DATABASE_DEAD_PEER_SECONDS // 8),
        "keepalives_count": 4,
        "tcp_user_timeout": DATABASE_DEAD_PEER_SECONDS * 1000,
        # Parameters of the URL itself (?connect_timeout=...) win.
        **DATABASES["default"].get("OPTIONS", {}),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer ----------------------------------------------------------

REDIS_URL = env_str("REDIS_URL")


def _redis_retry():
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff

    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)


# Prefix of every Redis key the project writes (channel layer and registry), so
# several deployments (or a test run) can share one Redis database.
REDIS_PREFIX = env_str("REDIS_PREFIX", "rt")
# Which channels-redis layer carries the hub's events (see bench/RESULTS.md):
# "core" (sorted sets, one buffered channel per process) or "pubsub" (Redis PUBLISH/SUBSCRIBE).
REDIS_LAYER = env_str("REDIS_LAYER", "core").lower()
if REDIS_LAYER not in {"core", "pubsub"}:
    raise ImproperlyConfigured(f"REDIS_LAYER must be 'core' or 'pubsub', not {REDIS_LAYER!r}")
if REDIS_URL and REDIS_LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # No capacity or expiry: Redis pushes each event to the subscribed processes.
            "CONFIG": {"hosts": [REDIS_URL], "prefix": REDIS_PREFIX + ":layer"},
        }
    }
elif REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{
                    "address": REDIS_URL,
                    # redis-py 8 gives up a read after 5 s by default, as long as
                    # the layer's blocking pop waits: idle reads failed, and an event
                    # popped just then was lost. Longer than the pop, still finite.
                    "socket_timeout": 10,
                    # Pooled connections are dead after a Redis restart: retry on a
                    # new one instead of failing the first command on each.
                    "retry": _redis_retry(),
                    # redis-py 8's pool raises MaxConnectionsError past its cap (100)
                    # instead of waiting: a join storm of 1000 sockets sends that many
                    # presence events at once (bench/RESULTS.md).
                    "max_connections": 1000,
                }],
                "prefix": REDIS_PREFIX + ":layer",
                # One channel per process carries every event of that process (see
                # realtime/hub.py), so its buffer must hold a burst of a busy server.
                "capacity": 10000,
                "expiry": 60,
                # Memberships are refreshed by each process every few minutes; a
                # day keeps them past daphne's websocket timeout either way.
                "group_expiry": 86400,
            },
        }
    }
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX + ":cache",
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 10000, "expiry": 60, "group_expiry": 86400},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Identity ---------------------------------------------------------------

JWT_SECRET = env_str("JWT_SECRET") or SECRET_KEY
JWT_TTL = env_int("JWT_TTL", 3600, minimum=1)
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5, minimum=1)
LOGIN_FAILURE_WINDOW = 300

# Every password check (API, login page, admin) goes through the login throttle;
# ModelBackend never checks a password here, it only keeps older sessions valid.
AUTHENTICATION_BACKENDS = [
    "realtime.auth.ThrottledModelBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# --- WebSocket limits (PROTOCOL.md "Errors and limits"; 0 disables) ---------

WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 65536)
WS_RATE_LIMIT = env_int("WS_RATE_LIMIT", 20)
WS_RATE_BURST = env_int("WS_RATE_BURST", 40)
WS_MAX_CONNECTIONS = env_int("WS_MAX_CONNECTIONS", 10000)
WS_MAX_CONNECTIONS_PER_USER = env_int("WS_MAX_CONNECTIONS_PER_USER", 10)
# Anonymous sockets (/ws/echo/) of this process: at most this many of its
# WS_MAX_CONNECTIONS (default a tenth, at least 1), so that the rest stays for
# authenticated users; and at most WS_MAX_CONNECTIONS_PER_ADDRESS per client address.
WS_MAX_ANONYMOUS_CONNECTIONS = env_int(
    "WS_MAX_ANONYMOUS_CONNECTIONS", max(1, WS_MAX_CONNECTIONS // 10) if WS_MAX_CONNECTIONS else 0)
WS_MAX_CONNECTIONS_PER_ADDRESS = env_int("WS_MAX_CONNECTIONS_PER_ADDRESS", 20)
NOTIFICATIONS_QUEUE_LIMIT = env_int("NOTIFICATIONS_QUEUE_LIMIT", 100, minimum=1)
# Bytes the server may hold for one client that does not read (a stalled or very
# slow peer in a busy room); past it the connection is closed with 4010 and the
# client recovers with ?since= on reconnect.
WS_MAX_SEND_BUFFER_BYTES = env_int("WS_MAX_SEND_BUFFER_BYTES", 4 * 1024 * 1024)
# Largest HTTP request body daphne takes (413 and close past it, before it is buffered).
HTTP_MAX_BODY_BYTES = env_int("HTTP_MAX_BODY_BYTES", 10 * 1024 * 1024)
# Chat history built per client address (per process): a token bucket in bytes of
# history frames on join (a ?since= join of a room of large messages is up to 16 MB).
# While an address is in debt its joins are closed with 4013 (try again later).
CHAT_HISTORY_BURST_BYTES = env_int("CHAT_HISTORY_BURST_BYTES", 64 * 1024 * 1024)
CHAT_HISTORY_BYTES_PER_SECOND = env_int("CHAT_HISTORY_BYTES_PER_SECOND", 8 * 1024 * 1024)

# How often each process writes its heartbeat to the registry, and after how many
# seconds without one the others treat it as dead (its users leave their rooms).
HUB_HEARTBEAT_SECONDS = env_int("HUB_HEARTBEAT_SECONDS", 10, minimum=1)
HUB_DEAD_AFTER_SECONDS = env_int("HUB_DEAD_AFTER_SECONDS", 30, minimum=2)
# Deactivating or deleting a user closes their connections at once (a signal);
# each process also re-checks its users this often, for changes made where the
# signal cannot reach it (another process on the in-memory layer, raw SQL).
REVOCATION_SWEEP_SECONDS = env_int("REVOCATION_SWEEP_SECONDS", 60, minimum=1)
# Logging out closes that session's WebSockets at once (a signal); each process
# also checks the sessions of its session-cookie WebSockets this often, which
# closes them within this (plus a query) after an expiry or a flush.
SESSION_SWEEP_SECONDS = env_int("SESSION_SWEEP_SECONDS", 2, minimum=1)

# --- Server (used by `manage.py serve`) ---------------------------------------

# A graceful stop (SIGTERM under daphne) closes WebSockets with 4012, answers the
# requests it has read, stores pending acks, and takes at most this long.
SHUTDOWN_GRACE_SECONDS = env_int("SHUTDOWN_GRACE_SECONDS", 10, minimum=1)

SERVER_HOST = env_str("HOST", "127.0.0.1")
SERVER_PORT = env_int("PORT", 8000, minimum=1)
# Connections the kernel queues before daphne accepts them. Twisted's default of 50
# drops the SYNs of a reconnect storm, which the clients resend 1, 3, 7 s later; the
# kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = env_int("LISTEN_BACKLOG", 2048, minimum=1)
# Collections of the middle generation between two full garbage collections (Python's
# default: 10). A full collection walks every live connection while the server waits
# (reconnect storms: bench/RESULTS.md). Raised only where connections are freed without
# the collector (else their cycles would wait for the rarer full collections): under
# manage.py serve with the daphne adapter on, and under uvicorn's httptools and
# websockets-sansio with its adapter on (realtime.servers); 0 keeps Python's default.
GC_THRESHOLD2 = env_int("GC_THRESHOLD2", 1000)
WS_PING_INTERVAL = env_int("WS_PING_INTERVAL", 20, minimum=1)
WS_PING_TIMEOUT = env_int("WS_PING_TIMEOUT", 30, minimum=1)
WS_TIMEOUT = env_int("WS_TIMEOUT", 86400)
# Seconds from the TCP connection to the accept before daphne drops a handshake. In a
# reconnect storm a handshake waits its turn behind thousands of others: at 10 s daphne
# dropped them after part of their work was done, and fewer got through (bench/RESULTS.md).
WS_CONNECT_TIMEOUT = env_int("WS_CONNECT_TIMEOUT", 60, minimum=1)
PROXY_HEADERS = env_bool("PROXY_HEADERS", False)
# daphne's access log on stdout (a line per request and per WebSocket connect/close).
ACCESS_LOG = env_bool("ACCESS_LOG", True)
# Bearer token that may read /metrics besides staff users (empty: staff only).
METRICS_TOKEN = env_str("METRICS_TOKEN")

# --- Internationalisation, static files ----------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

# --- Logging -----------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "daphne": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
