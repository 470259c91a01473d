"""Django settings for the project.

Every value that differs between machines comes from the environment (django-environ), with defaults that
work out of the box on one machine: a SQLite file and a Redis on 127.0.0.1. The retry system's own settings
live in the ``QUEUEING`` namespace below (see ``queueing/conf.py`` for each key, its unit and its default);
``QUEUEING_*`` environment variables override them.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from pathlib import Path

import environ
from kombu import Queue

from project import stackfile

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("QUEUEING_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS (production) -------------------------------------------------------------------------------
# DJANGO_HTTPS=true: the site is served over HTTPS only, by itself or behind a TLS-terminating proxy. It turns on
# the redirect to HTTPS, secure-only cookies and HSTS (one year, subdomains, preload-ready); each can be tuned
# below. Off by default: bin/start and runserver speak plain HTTP. `manage.py check --deploy` is clean with it.
HTTPS_ONLY = env.bool("DJANGO_HTTPS", default=False)
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=HTTPS_ONLY)
SESSION_COOKIE_SECURE = HTTPS_ONLY
CSRF_COOKIE_SECURE = HTTPS_ONLY
# Seconds browsers remember to use HTTPS only; 0: no HSTS header. Try 3600 first if unsure: it cannot be undone
# for a browser before it runs out.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if HTTPS_ONLY else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS_ONLY)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=HTTPS_ONLY)
# DJANGO_BEHIND_PROXY=true: TLS ends at a proxy that sets X-Forwarded-Proto (and drops a client's own); only
# then may a request that says "https" there be believed. Without it, behind a proxy, the redirect would loop.
if env.bool("DJANGO_BEHIND_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


def _secret_key() -> str:
    """DJANGO_SECRET_KEY, or a random key made once per checkout and kept (mode 0600) under var/."""
    if key := str(env.str("DJANGO_SECRET_KEY", default="")):
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "ninja",  # serves the interactive API docs' scripts locally, not from a CDN
    "queueing",
    "messaging",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -------------------------------------------------------------------------------------------
# DATABASE_URL, e.g. postgres://user@127.0.0.1:5432/queueing; default: a SQLite file under var/.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _sqlite_name = str(DATABASES["default"]["NAME"])
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # BEGIN IMMEDIATE: a transaction that reads then writes takes the write lock up front, so two
            # processes claiming rows serialize instead of failing with SQLITE_BUSY mid-transaction.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file (not :memory:) for the test database, so that worker and beat processes started by the
    # tests share it with the test process.
    if _sqlite_name != ":memory:":
        DATABASES["default"]["TEST"] = {"NAME": f"{_sqlite_name}.test"}
    VAR_DIR.mkdir(parents=True, exist_ok=True)

# Connections are health-checked before reuse. Web requests keep Django's default lifetime (CONN_MAX_AGE,
# seconds; 0: closed after each request). Workers keep theirs between tasks for WORKER_CONN_MAX_AGE seconds
# (project/celery.py): a fresh PostgreSQL connection per failed task cost 10 of the failure path's 28 ms
# (docs/benchmarks.md, "profile"). 0 restores a connection per task.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
WORKER_CONN_MAX_AGE = env.int("WORKER_CONN_MAX_AGE", default=300)
# Seconds a worker reuses the automatic retry policy it read (start_auto_retry reaches workers within it).
WORKER_POLICY_MAX_AGE_SECONDS = env.float("WORKER_POLICY_MAX_AGE_SECONDS", default=1.0)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
with contextlib.suppress(OSError):  # a read-only file system serves collected files only
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# WhiteNoise serves the admin's files straight from the installed apps: no collectstatic step needed.
WHITENOISE_USE_FINDERS = True

# Who gets the alerts of queueing.alerts.MailAdminsSink: DJANGO_ADMINS=ops@example.com,oncall@example.com; the
# mail server: EMAIL_URL, e.g. smtp+tls://user:password@smtp.example.com:587 (default: print to the console).
ADMINS = [(address, address) for address in env.list("DJANGO_ADMINS", default=[])]
SERVER_EMAIL = env.str("DJANGO_SERVER_EMAIL", default="queueing@localhost")
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))

# Request bodies larger than this are refused (413 from the API).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", default=256 * 1024)

# Applied by project/logconfig.py: as written, except in a Celery process (worker, Beat, Flower), whose root
# logger Celery set up; there only the levels of the named loggers are applied, however often Django sets up.
LOGGING_CONFIG = "project.logconfig.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # The root logger prints; a Celery worker replaces it with its own, so nothing is printed twice.
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "queueing": {"level": env.str("QUEUEING_LOG_LEVEL", default="INFO")},
        "messaging": {"level": "INFO"},
    },
}


# --- Celery (read by project/celery.py with namespace="CELERY") ------------------------------------------
def _redis_url() -> str:
    """REDIS_URL; unset, the Redis of the stack bin/start runs from this checkout (var/devstack.json); else 6379."""
    if url := str(env.str("REDIS_URL", default="")):
        return url
    if stack := stackfile.running(VAR_DIR):
        # Said on stderr, so that a command's own output (e.g. check_queue --json) stays as it is.
        print(
            f"REDIS_URL is not set: using {stackfile.without_password(stack.redis_url)}, the Redis of the stack "
            f"bin/start runs (pid {stack.pid}, {stack.path})",
            file=sys.stderr,
        )
        return stack.redis_url
    return "redis://127.0.0.1:6379/0"


# REDIS_URL: the broker unless CELERY_BROKER_URL names another, and the Redis of the status's counters and shared
# copies when the broker is not Redis (queueing/status/broker.py; docs/brokers.md).
REDIS_URL = _redis_url()
# Any broker URL Celery supports: redis://, rediss://, sentinel://, amqp:// (RabbitMQ) ...; default: REDIS_URL.
CELERY_BROKER_URL = str(env.str("CELERY_BROKER_URL", default="")) or REDIS_URL
_BROKER_SCHEME = CELERY_BROKER_URL.split("://", 1)[0].split("+", 1)[0].lower()
#: RabbitMQ (and any AMQP 0-9-1 broker) rather than a transport that kombu emulates.
BROKER_IS_AMQP = _BROKER_SCHEME in ("amqp", "amqps", "pyamqp", "librabbitmq")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
# Where task results go (AsyncResult.get()): empty, none. E.g. redis://127.0.0.1:6379/1 or django-db (with
# django-celery-results). Results are ignored unless a task (ignore_result=False) or a call asks for them;
# a re-sent job's result is stored under the original task id (docs/workflows.md).
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# RabbitMQ honours a message's priority only on a queue declared with x-max-priority (0-10 here, 10 the most
# urgent); the Redis transport ignores queue arguments and has priority steps of its own. A RabbitMQ queue that
# already exists without the argument must be deleted once (RabbitMQ refuses to redeclare it differently).
_QUEUE_ARGUMENTS = {"x-max-priority": 10} if BROKER_IS_AMQP else None
CELERY_TASK_QUEUES = (
    Queue("default", routing_key="default", queue_arguments=_QUEUE_ARGUMENTS),
    Queue("whatsapp-send", routing_key="whatsapp-send", queue_arguments=_QUEUE_ARGUMENTS),
)
CELERY_TASK_ROUTES = {"messaging.tasks.*": {"queue": "whatsapp-send"}}
# A task is acknowledged when it ends, so a worker killed mid-task leaves it on the broker for another.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True  # the FailedJob row is the record of a failure
# A call whose worker process is killed is retried like a failure, then recorded (queueing/tasks.py).
CELERY_TASK_RETRY_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A pool child whose resident memory passed this many KiB (kibibytes) is replaced after its current task
# (the task ends first: nothing is lost or run twice; docs/reliability.md, F11). 0: never replaced for memory.
_WORKER_MAX_MEMORY_PER_CHILD_KIB = env.int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", default=512_000)
CELERY_WORKER_MAX_MEMORY_PER_CHILD = _WORKER_MAX_MEMORY_PER_CHILD_KIB or None
# Celery's Django fix-up closes the database connection before and after every task unless this is set; it
# then closes it every 1,000 tasks and project/celery.py drops it when unusable or older than WORKER_CONN_MAX_AGE.
CELERY_DB_REUSE_MAX = 1_000 if WORKER_CONN_MAX_AGE else None
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=540)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=600)
# Redis: longer than the longest immediate-retry countdown plus the hard time limit: Redis redelivers an
# unacknowledged message after this long. The 5-minute sweep delay is kept in the database, not here.
# RabbitMQ has no visibility timeout; its consumer_timeout (below) bounds the same span instead.
_VISIBILITY_TIMEOUT_SECONDS = 2 * 3600
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = (
    {} if BROKER_IS_AMQP else {"visibility_timeout": _VISIBILITY_TIMEOUT_SECONDS}
)
if _BROKER_SCHEME == "sentinel":  # sentinel://host:26379;sentinel://host2:26379/0: the master the sentinels name
    CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = env.str("REDIS_SENTINEL_MASTER_NAME", default="")
# RabbitMQ (3.8.15 and later) closes the channel of a consumer that holds a delivery unacknowledged longer than
# its consumer_timeout (default 30 minutes). A worker holds a countdown message until it runs and then until it
# ends (late ack): the longest immediate-retry countdown plus the hard time limit must stay under it; the
# queueing.W101 check says so at start-up. Set this to the server's value if you changed it there.
RABBITMQ_CONSUMER_TIMEOUT_SECONDS = env.int("RABBITMQ_CONSUMER_TIMEOUT_SECONDS", default=1800)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}
# Workers send task events so that Flower shows tasks.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE

# --- The retry system (queueing/conf.py documents every key; QUEUEING_* env vars override) -----------------
QUEUEING: dict[str, object] = {}

# --- The example workload ------------------------------------------------------------------------------
WHATSAPP_GATEWAY_URL = env.str("WHATSAPP_GATEWAY_URL", default="http://127.0.0.1:8001")
WHATSAPP_GATEWAY_TIMEOUT_SECONDS = env.float("WHATSAPP_GATEWAY_TIMEOUT_SECONDS", default=10.0)
# Seconds before the sweep retries a message whose session the gateway did not know (messaging/policy.py).
WHATSAPP_SESSION_RETRY_DELAY_SECONDS = env.float("WHATSAPP_SESSION_RETRY_DELAY_SECONDS", default=900.0)

# --- Flower (links from the admin) ---------------------------------------------------------------------
FLOWER_URL = env.str("FLOWER_URL", default="http://127.0.0.1:5555")
