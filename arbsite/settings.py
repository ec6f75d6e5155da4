"""The one settings module. Everything that differs between machines comes from the environment."""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean, got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-only-for-debug"

ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

TRADING_MODE = env_str("TRADING_MODE", "paper")
if TRADING_MODE not in {"paper", "live"}:
    raise ImproperlyConfigured(f"TRADING_MODE must be 'paper' or 'live', got {TRADING_MODE!r}")
# Legs, paper and live: how long a fill is polled for, how often a missing quantity is retried within the
# price guard, and the worst price (in bps off the fill) a hedge may close a one-sided fill at.
LEG_FILL_DEADLINE_MS = env_int("LEG_FILL_DEADLINE_MS", 5_000)
LEG_RETRIES = env_int("LEG_RETRIES", 2)
HEDGE_MAX_LOSS_BPS = env_int("HEDGE_MAX_LOSS_BPS", 50)
# Hedges tried for what stays one-sided before the position is left to a person (with an alert).
HEDGE_ATTEMPTS = env_int("HEDGE_ATTEMPTS", 2)
# After a cancel, how long the order is read until the venue says it is done (a pending cancel).
CANCEL_CONFIRM_MS = env_int("CANCEL_CONFIRM_MS", 5_000)
# A trade task's time limits: past the soft one it stops where it is (the trade stays in flight, to
# be resumed), past the hard one its process is killed (the same, without a word).
TRADE_SOFT_TIME_LIMIT_S = env_int("TRADE_SOFT_TIME_LIMIT_S", 50)
TRADE_TIME_LIMIT_S = env_int("TRADE_TIME_LIMIT_S", 60)
# A dispatched opportunity no worker took up this long past its time to live expires (its task
# was lost); in-flight ones whose worker died are resumed by the `trade.resume` beat task.
LOST_DISPATCH_SECONDS = env_int("LOST_DISPATCH_SECONDS", 60)
# The listener queues a trade task before it writes the opportunity's row; a worker that finds no
# row waits this long for it before it gives the task up (nothing is traded).
RECORD_WAIT_MS = env_int("RECORD_WAIT_MS", 2_000)
if not 0 <= LEG_RETRIES <= 9 or not 1 <= HEDGE_ATTEMPTS <= 10:
    raise ImproperlyConfigured("LEG_RETRIES must be within 0..9 and HEDGE_ATTEMPTS within 1..10")
# Off only against a venue without rate limits (the local emulator): ccxt then skips its pacing.
LIVE_RATE_LIMITED = env_bool("LIVE_RATE_LIMITED", True)
# Live calls of one key are paced across every process through Redis by ccxt's costs, in a bucket
# holding this many tokens when idle (1: exactly ccxt's own pacing of one client).
LIVE_RATE_BURST = env_int("LIVE_RATE_BURST", 1)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "trading",
    "backtest",
    "devtools",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "arbsite.urls"
# Error reports and debug pages mask URL passwords and every secret, even with DEBUG on.
DEFAULT_EXCEPTION_REPORTER_FILTER = "trading.observability.reports.SecretMaskingFilter"
DEFAULT_EXCEPTION_REPORTER = "trading.observability.reports.MaskingExceptionReporter"
WSGI_APPLICATION = "arbsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "arbsite" / "templates"],  # project-wide admin overrides
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

# SQLite is only the embedded default for a quick local run: WAL and a busy timeout let the
# demo's processes share the file. Everything else (tests included) uses PostgreSQL via psycopg 3.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'arb.sqlite3'}"), conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # An unreachable database fails a request (or a scrape of /metrics) in seconds, not minutes.
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int("DATABASE_CONNECT_TIMEOUT", 5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Pub/Sub channels are server-wide whatever the database number, so every channel and key this
# project names carries this prefix; test runs and side-by-side deployments each pick their own.
ARB_PREFIX = env_str("ARB_PREFIX", "arb:")

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "global_keyprefix": ARB_PREFIX,
    # Late acks redeliver unacknowledged tasks after this; trade tasks are idempotent and short.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 300),
}
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "collect.*": {"queue": "collect"},
    "trade.*": {"queue": "trade"},
}
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 60)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 50)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection before and after each task unless told to
# reuse them, and a trade would then open a new one (several ms) between its decision and its
# orders. Connections are reused; before each task the worker closes any that failed or outlived
# CONN_MAX_AGE (arbsite/celery.py).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"

# Collection: a venue that fails this many times in a row is marked down until it answers again.
COLLECT_FAILURES_BEFORE_DOWN = env_int("COLLECT_FAILURES_BEFORE_DOWN", 3)
COLLECT_MAX_BACKOFF_SECONDS = env_int("COLLECT_MAX_BACKOFF_SECONDS", 30)
COLLECT_TIMEOUT_MS = env_int("COLLECT_TIMEOUT_MS", 3000)
# Simulated venues compute their books from this seed, so every process sees the same market.
SIMULATION_SEED = env_int("SIMULATION_SEED", 7)
# `manage.py prune_quotes` deletes recorded quotes older than this unless told otherwise.
QUOTE_RETENTION_DAYS = env_int("QUOTE_RETENTION_DAYS", 7)
# Books waiting in Redis to be stored (while the database is away, say) are kept up to this many;
# past it a book is still published, and counted as unstored for its venue.
QUOTE_BUFFER_MAX = env_int("QUOTE_BUFFER_MAX", 100_000)

# The price band: a book whose mid is further than this (bps) from the median mid of the other
# venues' books of the last PRICE_BAND_WINDOW_MS, or, alone on its symbol, of its own last
# PRICE_BAND_HISTORY books, is refused by the collector and the listener (0: no band).
PRICE_BAND_BPS = env_int("PRICE_BAND_BPS", 500)
PRICE_BAND_WINDOW_MS = env_int("PRICE_BAND_WINDOW_MS", 10_000)
PRICE_BAND_HISTORY = env_int("PRICE_BAND_HISTORY", 5)
# Sequence numbers: a forward step up to SEQ_MAX_GAP is a gap (the messages skipped were lost); a
# step back or a longer jump claims a new numbering, followed once SEQ_CONFIRMATIONS books in a
# row (the claiming one included) carry it on.
SEQ_MAX_GAP = env_int("SEQ_MAX_GAP", 10_000)
SEQ_CONFIRMATIONS = env_int("SEQ_CONFIRMATIONS", 2)
# For benchmarks: the listener notes when it decided on each book (venue, symbol, seq, wall ns)
# and appends them to a Redis list with each heartbeat (pubsub.Names.decision_trace).
LISTENER_TRACE_DECISIONS = env_bool("LISTENER_TRACE_DECISIONS", False)

# Streaming (manage.py stream_prices). A stream with no frame for STREAM_STALL_MS (a venue's
# stream_stall_ms, where set) is stale and resynced. A venue's stream counts as live while its
# heartbeat is no older than STREAM_HEARTBEAT_MAX_AGE_MS and says so; otherwise the collector
# polls the venue. Resyncs after faults in a row back off up to STREAM_MAX_BACKOFF_SECONDS.
STREAM_STALL_MS = env_int("STREAM_STALL_MS", 3_000)
STREAM_HEARTBEAT_MAX_AGE_MS = env_int("STREAM_HEARTBEAT_MAX_AGE_MS", 5_000)
STREAM_MAX_BACKOFF_SECONDS = env_int("STREAM_MAX_BACKOFF_SECONDS", 30)
# STREAM_FAULT_LIMIT faults of a venue's stream within STREAM_FAULT_WINDOW_SECONDS open an alert.
STREAM_FAULT_LIMIT = env_int("STREAM_FAULT_LIMIT", 3)
STREAM_FAULT_WINDOW_SECONDS = env_int("STREAM_FAULT_WINDOW_SECONDS", 300)
# A venue fed by both: its polled book and its streamed one further apart than this (bps of mid,
# best bid or best ask) disagree, which opens an alert.
STREAM_CROSSCHECK_BPS = env_int("STREAM_CROSSCHECK_BPS", 10)

# One logging configuration for every process (web, worker, beat, listener, commands): JSON lines
# on stdout, each with the correlation id of the work in progress and with secrets masked.
# Celery applies this same dictionary (arbsite/celery.py), so `celery -l` does not change it.
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "correlation": {"()": "trading.observability.logs.CorrelationFilter"},
        "redact": {"()": "trading.observability.logs.RedactionFilter"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
            "timestamp": True,
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json",
            "filters": ["correlation", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # Django's own defaults give these loggers plain-text handlers: route them here instead.
    "loggers": {
        name: {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
        for name in ("django", "django.server")
    },
}

# Notifications. Tokens and chat ids come only from the environment; a channel missing either is off.
SLACK_BOT_TOKEN = env_str("SLACK_BOT_TOKEN")
SLACK_CHANNEL = env_str("SLACK_CHANNEL")
SLACK_API_URL = env_str("SLACK_API_URL", "https://slack.com/api/")
TELEGRAM_BOT_TOKEN = env_str("TELEGRAM_BOT_TOKEN")
TELEGRAM_CHAT_ID = env_str("TELEGRAM_CHAT_ID")
TELEGRAM_API_URL = env_str("TELEGRAM_API_URL", "https://api.telegram.org")
NOTIFY_TIMEOUT_SECONDS = env_int("NOTIFY_TIMEOUT_SECONDS", 5)
# A channel answering with a temporary error is retried this often, backing off 1, 2, 4 ... s.
NOTIFY_MAX_RETRIES = env_int("NOTIFY_MAX_RETRIES", 4)
# The same event (same dedup key) is sent once per window; at most this many messages a minute.
NOTIFY_DEDUP_SECONDS = env_int("NOTIFY_DEDUP_SECONDS", 300)
NOTIFY_MAX_PER_MINUTE = env_int("NOTIFY_MAX_PER_MINUTE", 30)

# Monitoring limits, checked by the `monitor.check` beat task.
DAILY_LOSS_LIMIT = env_str("DAILY_LOSS_LIMIT", "500")  # quote currency, realized today
MAX_DRAWDOWN = env_str("MAX_DRAWDOWN", "1000")  # quote currency, peak to trough of today's PnL
QUEUE_BACKLOG_LIMIT = env_int("QUEUE_BACKLOG_LIMIT", 100)  # waiting tasks in any one queue
VENUE_ERROR_RATE_LIMIT = env_int("VENUE_ERROR_RATE_LIMIT", 3)  # failures in a row, or rejections per check
# An alert resolves only after its condition has stayed clear this long, so a flapping
# condition keeps one alert open instead of opening and resolving it over and over.
ALERT_CLEAR_SECONDS = env_int("ALERT_CLEAR_SECONDS", 30)

# Risk limits: defaults for the one RiskLimits row, which admin edits from then on (the daily loss
# limit is DAILY_LOSS_LIMIT above). Empty means no limit.
RISK_MAX_TRADE_NOTIONAL = env_str("RISK_MAX_TRADE_NOTIONAL") or None  # quote currency, one trade
RISK_MAX_OPEN_EXPOSURE = env_str("RISK_MAX_OPEN_EXPOSURE") or None  # quote currency, per venue and asset
RISK_PAIR_COOLDOWN_SECONDS = env_int("RISK_PAIR_COOLDOWN_SECONDS", 0)
