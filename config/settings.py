"""tutorloop settings: everything from environment variables, each with an embedded default.

The embedded default (no variables set) runs on one machine with no servers: SQLite under
``var/``, a filesystem Celery broker under ``var/``, the bundled demo model and the local
endpoint on 127.0.0.1. Production sets ``DATABASE_URL``, ``REDIS_URL``, ``SECRET_KEY``,
``DEBUG=false``, ``ALLOWED_HOSTS`` and friends (see docs/configuration.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from config.env import (
    BASE_DIR,
    BROKER_SCHEMES,
    bool_var,
    database_config,
    env,
    float_var,
    int_var,
    list_var,
    secret_key,
    url_var,
)

VAR_DIR = BASE_DIR / "var"
if env.str("TUTOR_VAR_DIR", default=None):
    from pathlib import Path

    VAR_DIR = Path(env.str("TUTOR_VAR_DIR")).resolve()

# --- core ---------------------------------------------------------------------------------
DEBUG = bool_var("DEBUG", True)
SECRET_KEY = secret_key(DEBUG, VAR_DIR)
ALLOWED_HOSTS = list_var("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = list_var("CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if "://" not in _origin:
        from config.env import SettingError

        raise SettingError(f"CSRF_TRUSTED_ORIGINS={_origin!r} is not valid: each origin needs a scheme")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_prometheus",
    "tutor",
    "feedback",
    "training",
]

MIDDLEWARE = [
    # Django's, django-prometheus's and WhiteNoise's middleware through config.middleware: the same classes,
    # able to run on the event loop under ASGI without a thread hop each (docs/web-tier.md, chat). Django's
    # security, CSRF and X-Frame-Options keep their paths (check --deploy looks for them) and are adapted
    # in place (config.middleware.run_django_middleware_on_loop, from tutor's AppConfig.ready).
    "config.middleware.PrometheusBeforeMiddleware",  # /metrics (config/metrics.py)
    "django.middleware.security.SecurityMiddleware",  # on the loop too (config.middleware.run_django_middleware_on_loop)
    "config.middleware.RequestIDMiddleware",
    "config.middleware.RequestSizeLimitMiddleware",
    "config.middleware.WhiteNoiseMiddleware",
    "config.middleware.SessionMiddleware",
    "config.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",  # idem
    "config.middleware.AuthRateLimitMiddleware",
    "config.middleware.AuthenticationMiddleware",
    "config.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",  # idem
    "config.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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
                "tutor.context_processors.roles",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
DATABASES = {"default": database_config("DATABASE_URL", VAR_DIR / "db.sqlite3")}
DATABASES["default"].setdefault("CONN_MAX_AGE", int_var("DB_CONN_MAX_AGE", 0, minimum=0))
# PostgreSQL connection pool per process (psycopg_pool through Django's OPTIONS["pool"]); 0 = off. The web
# tier sets it (Procfile web-prod, docker-compose): an ASGI process runs its sync views on one thread, so
# 4 connections cover it plus async streams; WEB_CONCURRENCY x DB_POOL_MAX_SIZE (+ Celery) must stay below
# PostgreSQL's max_connections (100): 5 workers x 4 = 20. See docs/performance.md.
DB_POOL_MAX_SIZE = int_var("DB_POOL_MAX_SIZE", 0, minimum=0)
if DB_POOL_MAX_SIZE and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    if DATABASES["default"]["CONN_MAX_AGE"]:
        from config.env import SettingError

        raise SettingError("DB_CONN_MAX_AGE must be 0 when DB_POOL_MAX_SIZE is set (the pool keeps connections)")
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(int_var("DB_POOL_MIN_SIZE", 1, minimum=0), DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": float_var("DB_POOL_TIMEOUT", 10.0, lo=0.1, hi=600),
    }
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL + a busy timeout let the web, worker and beat processes share one SQLite file.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE",
         "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    )
    # Tests use a file (not :memory:) so that worker processes see the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- auth -------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
TUTOR_ALLOW_SIGNUP = bool_var("TUTOR_ALLOW_SIGNUP", True)

# --- i18n / static ---------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
if DEBUG:
    os.makedirs(STATIC_ROOT, exist_ok=True)  # whitenoise warns about a missing root
MEDIA_ROOT = VAR_DIR / "media"
DATA_UPLOAD_MAX_MEMORY_SIZE = int_var("DATA_UPLOAD_MAX_MEMORY_SIZE", 10 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # uploads beyond 2.5 MB spill to a temporary file

# --- abuse limits (config/middleware.py, docs/security.md) -------------------------------------
# any request body beyond this is refused with 413 before it is read (the largest legitimate body is an
# import file of FEEDBACK_MAX_IMPORT_BYTES, set below; the default leaves room for its multipart envelope)
TUTOR_MAX_REQUEST_BYTES = int_var("TUTOR_MAX_REQUEST_BYTES", 0, minimum=0)  # 0: derived, see the feedback block
# failed sign-ins (login form, /api/auth/token/) per window: per client address + username, and per address
TUTOR_AUTH_WINDOW_SECONDS = int_var("TUTOR_AUTH_WINDOW_SECONDS", 300, minimum=1)
TUTOR_AUTH_MAX_PER_USERNAME = int_var("TUTOR_AUTH_MAX_PER_USERNAME", 10, minimum=1)
TUTOR_AUTH_MAX_PER_ADDRESS = int_var("TUTOR_AUTH_MAX_PER_ADDRESS", 50, minimum=1)
TUTOR_SIGNUP_MAX_PER_ADDRESS = int_var("TUTOR_SIGNUP_MAX_PER_ADDRESS", 20, minimum=1)
TUTOR_RATELIMIT_CACHE = "default"
# behind a reverse proxy that sets X-Forwarded-For, its first hop is the client address
TUTOR_TRUST_X_FORWARDED_FOR = bool_var("TUTOR_TRUST_X_FORWARDED_FOR", False)
# /metrics: with a token, scrapers send Authorization: Bearer <token>; without one, loopback only
TUTOR_METRICS_TOKEN = env.str("TUTOR_METRICS_TOKEN", default="") or None

# --- security (production) -------------------------------------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = bool_var("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int_var("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- REST API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        # DRF's TokenAuthentication, reading the user's roles in the same query (feedback/auth.py); one class for
        # every API so the OpenAPI schema has one "tokenAuth" scheme
        "feedback.auth.TokenWithRolesAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_RATES": {
        "student_messages": env.str("TUTOR_MESSAGE_RATE", default="30/min"),
    },
    "EXCEPTION_HANDLER": "rest_framework.views.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "tutorloop API",
    "DESCRIPTION": "Chat with the tutor, label completions, run the RLHF pipeline.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # the docs UI is served from the vendored sidecar, never a CDN
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"SubjectEnum": "tutor.models.SUBJECT_CHOICES"},
}

# --- cache ----------------------------------------------------------------------------------------
REDIS_URL = url_var("REDIS_URL", None, {"redis", "rediss"})
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Celery -----------------------------------------------------------------------------------------
_BROKER_DIR = VAR_DIR / "celery" / "broker"
_default_broker = REDIS_URL or "filesystem://"
CELERY_BROKER_URL = url_var("CELERY_BROKER_URL", _default_broker, BROKER_SCHEMES)
if CELERY_BROKER_URL.startswith("filesystem://"):
    for _sub in ("queue", "processed", "control"):
        os.makedirs(_BROKER_DIR / _sub, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(_BROKER_DIR / "control"),
        # kombu polls the folder; its 1 s default turns every hand-off into a one-second wait
        "polling_interval": float_var("CELERY_FILESYSTEM_POLLING_INTERVAL", 0.1, lo=0.01, hi=10),
    }
_results_dir = VAR_DIR / "celery" / "results"
CELERY_RESULT_BACKEND = url_var(
    "CELERY_RESULT_BACKEND", REDIS_URL or f"file://{_results_dir}", {"redis", "rediss", "file", "db+sqlite", "rpc"}
)
if CELERY_RESULT_BACKEND.startswith("file://"):
    os.makedirs(_results_dir, exist_ok=True)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = int_var("CELERY_TASK_SOFT_TIME_LIMIT", 3600, minimum=1)
CELERY_TASK_TIME_LIMIT = int_var("CELERY_TASK_TIME_LIMIT", 3900, minimum=1)
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# the worker reconnects to the broker every BROKER_RECONNECT_MAX_SECONDS at most, and never gives up
# (config/worker_consumer.py: Celery's own 2..30 s back-off kept /healthz red long after a Redis restart)
CELERY_WORKER_CONSUMER = "config.worker_consumer:Consumer"
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
BROKER_RECONNECT_MAX_SECONDS = float_var("BROKER_RECONNECT_MAX_SECONDS", 1.0, lo=0.1, hi=30)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ALWAYS_EAGER = False
HEALTHZ_WORKER_TIMEOUT = float_var("HEALTHZ_WORKER_TIMEOUT", 1.0, lo=0.1, hi=30)
HEALTHZ_CHECK_ENDPOINT = bool_var("HEALTHZ_CHECK_ENDPOINT", True)

# --- model & endpoint ------------------------------------------------------------------------------
TUTOR_BASE_MODEL = env.str("TUTOR_BASE_MODEL", default="demo")  # "demo" = the bundled demo model
TUTOR_ENDPOINT_URL = url_var("TUTOR_ENDPOINT_URL", "http://127.0.0.1:8080", {"http", "https"})
TUTOR_ENDPOINT_ADMIN_TOKEN = env.str("TUTOR_ENDPOINT_ADMIN_TOKEN", default="") or None
TUTOR_ENDPOINT_TIMEOUT = float_var("TUTOR_ENDPOINT_TIMEOUT", 60.0, lo=0.1, hi=3600)
# where the registry writes adapters and reward models (default <var>/models; tests point it elsewhere)
TUTOR_MODELS_DIR = Path(env.str("TUTOR_MODELS_DIR", default=str(VAR_DIR / "models"))).resolve()
TUTOR_DATASETS_DIR = VAR_DIR / "datasets"

# --- tutor (chat) -----------------------------------------------------------------------------------
TUTOR_MAX_MESSAGE_CHARS = int_var("TUTOR_MAX_MESSAGE_CHARS", 2000, minimum=10)
TUTOR_MAX_NEW_TOKENS = int_var("TUTOR_MAX_NEW_TOKENS", 96, minimum=1)
# sampling temperature of chat answers (0 = greedy, the same answer every time)
TUTOR_CHAT_TEMPERATURE = float_var("TUTOR_CHAT_TEMPERATURE", 0.7, lo=0.0, hi=5.0)
# the newest turns sent to the endpoint, in characters (its prompt limit is in tokens)
TUTOR_CONTEXT_CHARS = int_var("TUTOR_CONTEXT_CHARS", 3000, minimum=100)

# --- feedback (labeling) ----------------------------------------------------------------------------
FEEDBACK_K = int_var("FEEDBACK_K", 4, minimum=2)
FEEDBACK_OVERLAP = int_var("FEEDBACK_OVERLAP", 2, minimum=1)
FEEDBACK_LEASE_SECONDS = int_var("FEEDBACK_LEASE_SECONDS", 600, minimum=10)
FEEDBACK_TEMPERATURE = float_var("FEEDBACK_TEMPERATURE", 1.0, lo=0.0, hi=5.0)
# base seed of the endpoint sampling behind comparison tasks: each prompt and adapter version gets its own seed
# derived from it, so building the same tasks twice gives the same completions (a reproducible loop)
FEEDBACK_SEED = int_var("FEEDBACK_SEED", 0, minimum=0)
FEEDBACK_GOLD_RATE = float_var("FEEDBACK_GOLD_RATE", 0.1, lo=0.0, hi=1.0)
FEEDBACK_MAX_IMPORT_BYTES = int_var("FEEDBACK_MAX_IMPORT_BYTES", 50 * 1024 * 1024, minimum=1024)
TUTOR_MAX_REQUEST_BYTES = TUTOR_MAX_REQUEST_BYTES or FEEDBACK_MAX_IMPORT_BYTES + 1024 * 1024
# sources of preference pairs snapshots may take (the hard switch; admins switch each off in the studio too):
# labeler rankings, imported pairs, students' thumbs and regenerations (feedback/implicit.py, docs/labeling.md)
FEEDBACK_SOURCES = list_var("FEEDBACK_SOURCES", ["labeler", "imported", "thumbs", "regeneration"])
if set(FEEDBACK_SOURCES) - {"labeler", "imported", "thumbs", "regeneration"}:
    from config.env import SettingError

    raise SettingError(f"FEEDBACK_SOURCES={','.join(FEEDBACK_SOURCES)!r} is not valid: "
                       "expected some of labeler, imported, thumbs, regeneration")
# implicit pairs weigh less than a labeler's (reliability-weighted, at most 1): noisier, one student's click
FEEDBACK_IMPLICIT_WEIGHT_THUMBS = float_var("FEEDBACK_IMPLICIT_WEIGHT_THUMBS", 0.5, lo=0.0, hi=1.0)
FEEDBACK_IMPLICIT_WEIGHT_REGENERATION = float_var("FEEDBACK_IMPLICIT_WEIGHT_REGENERATION", 0.3, lo=0.0, hi=1.0)
# a thumbs-down without a "wrong"/"unsafe" reason is vaguer: its pairs' weight is multiplied by this
FEEDBACK_IMPLICIT_VAGUE_FACTOR = float_var("FEEDBACK_IMPLICIT_VAGUE_FACTOR", 0.75, lo=0.0, hi=1.0)
FEEDBACK_IMPLICIT_MAX_PAIRS_PER_PROMPT = int_var("FEEDBACK_IMPLICIT_MAX_PAIRS_PER_PROMPT", 16, minimum=1)

# --- training (pipeline) ----------------------------------------------------------------------------
TRAINING_MIN_NEW_PAIRS = int_var("TRAINING_MIN_NEW_PAIRS", 200, minimum=1)
# the pipeline's default reward backbone (a launch config's "reward": {"backbone": ...} still wins): "minilm", the
# packaged English encoder, measured the better proxy on the demo loop (docs/ppo.md); "demo" trains the reward
# model on the policy's own base (the tests, which run on a tiny base)
TRAINING_REWARD_BACKBONE = env.str("TRAINING_REWARD_BACKBONE", default="minilm").strip() or "minilm"
# how often beat checks for new pairs (a count query; the studio's schedule editor changes it). 60 s: the demo
# tour starts its pipeline within a minute of reaching the threshold
TRAINING_SCHEDULE_SECONDS = int_var("TRAINING_SCHEDULE_SECONDS", 60, minimum=1)
TRAINING_CANARY_SHARE = float_var("TRAINING_CANARY_SHARE", 0.1, lo=0.0, hi=1.0)
TRAINING_AUTO_PROMOTE = bool_var("TRAINING_AUTO_PROMOTE", True)
# the canary's bake (training/canary.py, docs/studio.md): it serves its share at least this long AND until it wrote
# this many answers, then is promoted unless a live signal is worse than the promoted version's by more than its
# margin (then rolled back). After TRAINING_CANARY_MAX_SECONDS (0: never) it is judged on what it has.
TRAINING_CANARY_MIN_SECONDS = float_var("TRAINING_CANARY_MIN_SECONDS", 300.0, lo=0.0, hi=30 * 86400)
TRAINING_CANARY_MIN_ANSWERS = int_var("TRAINING_CANARY_MIN_ANSWERS", 20, minimum=0)
TRAINING_CANARY_MAX_SECONDS = float_var("TRAINING_CANARY_MAX_SECONDS", 600.0, lo=0.0, hi=30 * 86400)
# margins: canary rate minus promoted rate (thumbs-down, regenerations, endpoint errors per answer), and the
# median latency's relative increase (0.5: the canary may be up to 1.5 × slower)
TRAINING_CANARY_MARGIN_THUMBS_DOWN = float_var("TRAINING_CANARY_MARGIN_THUMBS_DOWN", 0.05, lo=0.0, hi=1.0)
TRAINING_CANARY_MARGIN_REGENERATION = float_var("TRAINING_CANARY_MARGIN_REGENERATION", 0.05, lo=0.0, hi=1.0)
TRAINING_CANARY_MARGIN_ERRORS = float_var("TRAINING_CANARY_MARGIN_ERRORS", 0.02, lo=0.0, hi=1.0)
TRAINING_CANARY_MARGIN_LATENCY = float_var("TRAINING_CANARY_MARGIN_LATENCY", 0.5, lo=0.0, hi=100.0)
# how often beat runs the canary watch (training.watch_canaries)
TRAINING_CANARY_CHECK_SECONDS = int_var("TRAINING_CANARY_CHECK_SECONDS", 30, minimum=1)
# seconds between a job's progress/metrics writes (every step is kept; writes are batched)
TRAINING_PROGRESS_INTERVAL = float_var("TRAINING_PROGRESS_INTERVAL", 1.0, lo=0.0, hi=60)
TUTOR_DEPLOY_TARGET = env.str("TUTOR_DEPLOY_TARGET", default="local")
# the evaluation gate (rlhf.evaluation): a candidate is promoted only if every enabled suite passes
TRAINING_GATE_SUITES = list_var("TRAINING_GATE_SUITES", ["reward_win_rate", "answer_key_accuracy", "kl",
                                                         "length_drift", "harmlessness"])
TRAINING_GATE_MIN_WIN_RATE = float_var("TRAINING_GATE_MIN_WIN_RATE", 0.5, lo=0.0, hi=1.0)
TRAINING_GATE_ACCURACY_TOLERANCE = float_var("TRAINING_GATE_ACCURACY_TOLERANCE", 0.0, lo=0.0, hi=1.0)
# accuracy may fall short of the promoted version's by at most this many standard errors of the paired per-prompt
# difference (one-sided 95 %): sampled answers are noisy, and an equally good candidate must not be a coin toss
TRAINING_GATE_ACCURACY_Z = float_var("TRAINING_GATE_ACCURACY_Z", 1.645, lo=0.0, hi=10.0)
TRAINING_GATE_MAX_KL = float_var("TRAINING_GATE_MAX_KL", 8.0, lo=0.0, hi=1e6)  # nats per response
TRAINING_GATE_MAX_LENGTH_DRIFT = float_var("TRAINING_GATE_MAX_LENGTH_DRIFT", 0.5, lo=0.0, hi=100.0)
TRAINING_GATE_MAX_UNSAFE_RATE = float_var("TRAINING_GATE_MAX_UNSAFE_RATE", 0.0, lo=0.0, hi=1.0)
TRAINING_GATE_PROMPTS = int_var("TRAINING_GATE_PROMPTS", 64, minimum=1)  # held-out prompts per subject
# the gate reads answers the way students get them: sampled at the chat's temperature (0 = greedy), this many
# per prompt, with the same seed for both versions
TRAINING_GATE_TEMPERATURE = float_var("TRAINING_GATE_TEMPERATURE", TUTOR_CHAT_TEMPERATURE, lo=0.0, hi=5.0)
TRAINING_GATE_SAMPLES = int_var("TRAINING_GATE_SAMPLES", 8, minimum=1)
# a subject is trained only when the snapshot holds at least this many of its pairs
TRAINING_MIN_SUBJECT_PAIRS = int_var("TRAINING_MIN_SUBJECT_PAIRS", 8, minimum=1)
# a running job whose heartbeat is older than this is dead (its worker was lost): the reaper fails it
TRAINING_HEARTBEAT_SECONDS = float_var("TRAINING_HEARTBEAT_SECONDS", 5.0, lo=0.1, hi=600)
TRAINING_JOB_STALE_SECONDS = float_var("TRAINING_JOB_STALE_SECONDS", 60.0, lo=1.0, hi=86400)
TRAINING_REAPER_INTERVAL = float_var("TRAINING_REAPER_INTERVAL", 30.0, lo=1.0, hi=86400)
TRAINING_DEPLOY_ATTEMPTS = int_var("TRAINING_DEPLOY_ATTEMPTS", 5, minimum=1)
# The gate of an optimised variant, against its source (training.optimise; a launch may override each):
# every quality suite may drop by at most the tolerance, and the variant must be faster by the speed factor
# or smaller by the size factor; measured on this many held-out questions (docs/optimise.md).
TRAINING_VARIANT_QUALITY_TOLERANCE = float_var("TRAINING_VARIANT_QUALITY_TOLERANCE", 0.05, lo=0.0, hi=1.0)
TRAINING_VARIANT_SPEED_FACTOR = float_var("TRAINING_VARIANT_SPEED_FACTOR", 1.2, lo=0.01, hi=100.0)
TRAINING_VARIANT_SIZE_FACTOR = float_var("TRAINING_VARIANT_SIZE_FACTOR", 0.6, lo=0.01, hi=100.0)
TRAINING_VARIANT_QUESTIONS = int_var("TRAINING_VARIANT_QUESTIONS", 16, minimum=1)
# the report card (rlhf.evals) runs as its own "benchmarks" job after a pipeline deploys a version: these suites
# ("all" or a comma list), at most this many items per suite (small: minutes on the demo machine's CPU)
TRAINING_REPORT_CARD_ENABLED = bool_var("TRAINING_REPORT_CARD_ENABLED", True)
TRAINING_REPORT_CARD_SUITES = list_var("TRAINING_REPORT_CARD_SUITES", ["all"])
TRAINING_REPORT_CARD_LIMIT = int_var("TRAINING_REPORT_CARD_LIMIT", 8, minimum=1)
# items per suite a gate entry ("gate": {"suites": [...]}) runs on, when the entry names no limit
TRAINING_GATE_SUITE_LIMIT = int_var("TRAINING_GATE_SUITE_LIMIT", 64, minimum=1)

if TUTOR_DEPLOY_TARGET not in {"local", "sagemaker"}:
    from config.env import SettingError

    raise SettingError(f"TUTOR_DEPLOY_TARGET={TUTOR_DEPLOY_TARGET!r} is not valid: expected local or sagemaker")
# SageMaker target (docs/deploy-sagemaker.md); serving.deploy.options_from_settings reads these
AWS_REGION = env.str("AWS_REGION", default="") or env.str("AWS_DEFAULT_REGION", default="us-east-1")
AWS_ENDPOINT_URL = url_var("AWS_ENDPOINT_URL", None, {"http", "https"})  # e.g. a moto server; unset: real AWS
TUTOR_S3_BUCKET = env.str("TUTOR_S3_BUCKET", default="")
TUTOR_S3_PREFIX = env.str("TUTOR_S3_PREFIX", default="tutorloop").strip("/")
TUTOR_SAGEMAKER_ROLE_ARN = env.str("TUTOR_SAGEMAKER_ROLE_ARN", default="")
TUTOR_SAGEMAKER_IMAGE_URI = env.str("TUTOR_SAGEMAKER_IMAGE_URI", default="")
# ml.g5.xlarge (1x A10G GPU) or ml.inf2.xlarge (Inferentia2, optimum-neuron build); CPU: ml.m5.xlarge, ml.c5.2xlarge
TUTOR_SAGEMAKER_INSTANCE_TYPE = env.str("TUTOR_SAGEMAKER_INSTANCE_TYPE", default="ml.g5.xlarge")
TUTOR_SAGEMAKER_ENDPOINT_NAME = env.str("TUTOR_SAGEMAKER_ENDPOINT_NAME", default="tutorloop")
TUTOR_SAGEMAKER_LAYOUT = env.str("TUTOR_SAGEMAKER_LAYOUT", default="multimodel")
if TUTOR_SAGEMAKER_LAYOUT not in {"multimodel", "inference-components"}:
    from config.env import SettingError

    raise SettingError(f"TUTOR_SAGEMAKER_LAYOUT={TUTOR_SAGEMAKER_LAYOUT!r} is not valid: "
                       "expected multimodel or inference-components")
if TUTOR_DEPLOY_TARGET == "sagemaker" and not (TUTOR_S3_BUCKET and TUTOR_SAGEMAKER_ROLE_ARN and TUTOR_SAGEMAKER_IMAGE_URI):
    from config.env import SettingError

    raise SettingError("TUTOR_DEPLOY_TARGET=sagemaker needs TUTOR_S3_BUCKET, TUTOR_SAGEMAKER_ROLE_ARN and "
                       "TUTOR_SAGEMAKER_IMAGE_URI (see docs/deploy-sagemaker.md)")

# --- logging ---------------------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "config.request_id.RequestIDFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
