"""tagloop settings, read from environment variables.

Embedded default (nothing to install or run): SQLite file, kombu's filesystem broker,
private media folder, all under ``TAGLOOP_VAR`` (default ``./var``).
Production: set DATABASE_URL (postgres://...), CELERY_BROKER_URL (redis:// or amqp://),
SECRET_KEY, DEBUG=0, ALLOWED_HOSTS, and behind nginx with TLS TAGLOOP_HTTPS=1,
TAGLOOP_PROXY_SSL_HEADER=X-Forwarded-Proto, TAGLOOP_NUM_PROXIES=1, CACHE_URL (README,
"Production"). Same code.
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


VAR_DIR = Path(os.environ.get("TAGLOOP_VAR", BASE_DIR / "var")).resolve()

# --- security (README, "Production") --------------------------------------------------
DEBUG = env_bool("DEBUG", False)
# Production is any run whose environment says so: DEBUG given and off, or a public host named.
# Only a local run (nothing set: answers to localhost names only) or DEBUG=1 (./tagloop.sh
# demo) may fall back to the fixed development key; production without SECRET_KEY stops here.
DEV_SECRET_KEY = "insecure-local-only-set-SECRET_KEY-in-production"
PRODUCTION = not DEBUG and any(os.environ.get(n) for n in ("DEBUG", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"))
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if PRODUCTION and SECRET_KEY in ("", DEV_SECRET_KEY):
    raise ImproperlyConfigured(
        "SECRET_KEY is not set: a production run (DEBUG=0 or ALLOWED_HOSTS given) needs its own key, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'. DEBUG=1 allows the local development key."
    )
SECRET_KEY = SECRET_KEY or DEV_SECRET_KEY
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")  # old keys, while rotating
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# HTTPS: off unless the deployment says the whole site is served over TLS, since secure-only
# cookies break a plain-HTTP site and an SSL redirect loops behind a TLS-terminating proxy that
# Django cannot see through. TAGLOOP_PROXY_SSL_HEADER names the header the proxy sets (nginx:
# X-Forwarded-Proto); only set it when the proxy overwrites that header on every request.
TAGLOOP_HTTPS = env_bool("TAGLOOP_HTTPS", False)
if os.environ.get("TAGLOOP_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + os.environ["TAGLOOP_PROXY_SSL_HEADER"].strip().upper().replace("-", "_"), "https")
else:
    SECURE_PROXY_SSL_HEADER = None
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = TAGLOOP_HTTPS
# Redirect http -> https only where Django can tell them apart behind the proxy (else: a loop).
# gunicorn serving TLS itself: set SECURE_SSL_REDIRECT=1.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", TAGLOOP_HTTPS and SECURE_PROXY_SSL_HEADER is not None)
# Sent only on requests Django sees as HTTPS (so never over plain HTTP).
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if TAGLOOP_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Django's defaults, stated: nosniff, same-origin referrers and opener, no framing.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# A login lasts a working day, not Django's two weeks. (The CSRF cookie stays readable: the
# pages' JavaScript sends it back as X-CSRFToken.)
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600)
# Content-Security-Policy (tagloop.security): scripts only from this site, no inline script or
# event handler; inline styles allowed (plotly); images may be blob:/data: (map thumbnails,
# previews). TAGLOOP_CSP="" switches it off, or replaces it.
TAGLOOP_CSP = os.environ.get("TAGLOOP_CSP", "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:", "font-src 'self' data:", "connect-src 'self'", "worker-src 'self' blob:",
    "object-src 'none'", "base-uri 'self'", "form-action 'self'", "frame-ancestors 'none'",
]))

# Brute force: after TAGLOOP_LOGIN_FAILURE_LIMIT failed passwords for one username from one
# address, /login/, /admin/login/ and POST /api/v1/auth/token/ refuse that pair until the window
# (seconds from the first failure) ends; 0 switches it off. The token endpoint is also rate
# limited per address (TAGLOOP_TOKEN_RATE, DRF syntax; empty: off). Addresses come from
# REMOTE_ADDR, or behind TAGLOOP_NUM_PROXIES proxies from X-Forwarded-For.
TAGLOOP_LOGIN_FAILURE_LIMIT = env_int("TAGLOOP_LOGIN_FAILURE_LIMIT", 5)
TAGLOOP_LOGIN_FAILURE_WINDOW = env_int("TAGLOOP_LOGIN_FAILURE_WINDOW", 15 * 60)
TAGLOOP_TOKEN_RATE = os.environ.get("TAGLOOP_TOKEN_RATE", "10/minute") or None
TAGLOOP_NUM_PROXIES = env_int("TAGLOOP_NUM_PROXIES", 0)

# The counters live in the cache. Django's default is per process (gunicorn -w 4: four counters,
# reset on restart): production sets CACHE_URL to a shared one, redis://... or db://TABLE (then
# run manage.py createcachetable).
CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
elif CACHE_URL.startswith("db://") and CACHE_URL[5:]:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": CACHE_URL[5:]}}
elif CACHE_URL:
    raise ImproperlyConfigured(f"CACHE_URL must be redis://..., rediss://..., unix://... or db://TABLE, not {CACHE_URL!r}")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # naturaltime: "built just now", not "built 0 minutes ago"
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI / Redoc assets from a pip package: the docs page works offline.
    "drf_spectacular_sidecar",
    "labeling",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "tagloop.security.ContentSecurityPolicy",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "tagloop.api_paths.ApiPaths",  # inside CommonMiddleware: it answers an API path without its slash first
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tagloop.urls"
WSGI_APPLICATION = "tagloop.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'tagloop.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web server and Celery worker write to the same file: WAL lets readers go on while one
    # writes, IMMEDIATE transactions fail fast instead of deadlocking on lock upgrades, and
    # the timeout makes a writer wait for the other rather than raise "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests whose Celery worker runs in another process need a file, not :memory:.
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TAGLOOP_TEST_SQLITE", str(VAR_DIR / "test.sqlite3"))}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"

def _package_dir(module: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent.joinpath(*parts) if spec and spec.origin else BASE_DIR / "static"


# Third-party browser code comes from installed packages, never copied into the repo:
# plotly's wheel ships plotly.min.js -> /static/vendor/plotly/plotly.min.js
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/plotly", _package_dir("plotly", "package_data")),
]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
# collectstatic writes a gzip copy beside each file, which whitenoise serves to browsers that
# accept it (plotly.min.js: 4.8 MB otherwise, on every dashboard's first load). No hashed names:
# the review page's ES modules import each other by plain name.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Media is private: there is no MEDIA_URL route; files go out through views that check
# client membership (labeling.views_media), optionally handed to nginx/Apache by header.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/media-not-served/"
TAGLOOP_SENDFILE_HEADER = os.environ.get("TAGLOOP_SENDFILE_HEADER", "")  # e.g. X-Accel-Redirect
TAGLOOP_SENDFILE_PREFIX = os.environ.get("TAGLOOP_SENDFILE_PREFIX", "/protected/")

DATA_UPLOAD_MAX_NUMBER_FILES = env_int("TAGLOOP_MAX_UPLOAD_FILES", 1000)
TAGLOOP_MAX_UPLOAD_BYTES = env_int("TAGLOOP_MAX_UPLOAD_BYTES", 2 * 1024**3)  # one upload request, all files
TAGLOOP_IMPORT_MAX_FILE_BYTES = env_int("TAGLOOP_IMPORT_MAX_FILE_BYTES", 256 * 1024**2)  # one file of an import
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
# Larger uploads wait in a 0600 temporary file (deleted after the request) until they are
# staged under VAR_DIR/uploads; by default in the system's temp folder.
FILE_UPLOAD_TEMP_DIR = os.environ.get("FILE_UPLOAD_TEMP_DIR") or None

# --- ML -------------------------------------------------------------------------------
TAGLOOP_BACKBONE = os.environ.get("TAGLOOP_BACKBONE", "efficientnet-lite0")
# What of each image the backbone looks at (ml/multiview.py): "center" (one 224 px crop, the
# fastest), or a feature spec such as "center,flip:mean+tiles2,tiles3:max" (15 crops: small
# logos seen at 2-3x resolution; measured +3 to +9 points on logo tasks). Changing it, or the
# backbone, re-embeds the library at the next retrain. Checked at start-up (manage.py check).
TAGLOOP_VIEWS = os.environ.get("TAGLOOP_VIEWS", "center")
TAGLOOP_EMBED_RUNTIME = os.environ.get("TAGLOOP_EMBED_RUNTIME", "auto")
TAGLOOP_VECTOR_DIR = Path(os.environ.get("TAGLOOP_VECTOR_DIR", VAR_DIR / "vectors"))
TAGLOOP_MODEL_DIR = Path(os.environ.get("TAGLOOP_MODEL_DIR", VAR_DIR / "models"))
TAGLOOP_CACHE_DIR = Path(os.environ.get("TAGLOOP_CACHE_DIR", VAR_DIR / "cache"))
TAGLOOP_MAX_IMAGE_PIXELS = env_int("TAGLOOP_MAX_IMAGE_PIXELS", 100_000_000)
TAGLOOP_THUMB_SIZE = env_int("TAGLOOP_THUMB_SIZE", 320)
# A retrain whose worker died is given up after this long without a heartbeat.
TAGLOOP_RUN_STALE_SECONDS = env_int("TAGLOOP_RUN_STALE_SECONDS", 900)
TAGLOOP_SWEEP_SECONDS = env_int("TAGLOOP_SWEEP_SECONDS", 60)
# Second look: up to this many current labels a page load computes fresh scores itself
# (bench/noise.py, 2 cores: 2.7 s at 3k, 6 s at 10k, 44 s at 40k); above, it shows the last
# scores and a worker computes new ones.
TAGLOOP_SECOND_LOOK_INLINE = env_int("TAGLOOP_SECOND_LOOK_INLINE", 3000)
# A retrained model goes live unless the held-out labels show it worse than the live one
# (one-sided paired t-test on log-loss, p below this; ml.promotion). Larger: stricter.
try:
    TAGLOOP_PROMOTION_ALPHA = float(os.environ.get("TAGLOOP_PROMOTION_ALPHA") or 0.05)
except ValueError:
    TAGLOOP_PROMOTION_ALPHA = -1.0
if not 0 < TAGLOOP_PROMOTION_ALPHA <= 1:
    raise ImproperlyConfigured(
        f"TAGLOOP_PROMOTION_ALPHA must be a number above 0 and at most 1 (default 0.05), "
        f"not {os.environ.get('TAGLOOP_PROMOTION_ALPHA')!r}")

# --- Celery ---------------------------------------------------------------------------
BROKER_DIR = Path(os.environ.get("TAGLOOP_BROKER_DIR", VAR_DIR / "broker"))
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        # Broadcast (worker control) files; kombu's default is ./control in the working dir.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing must not hang a web request when the broker is down: fail fast, the periodic
# sweep re-enqueues what was missed.
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_TASK_PUBLISH_RETRY = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "labeling.tasks.run_import": {"queue": "import"},
    "labeling.tasks.train": {"queue": "train"},
    # the library scoring a promotion does, so where promotions run (one at a time there)
    "labeling.tasks.rescore_live": {"queue": "train"},
}
CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "labeling.tasks.sweep", "schedule": float(TAGLOOP_SWEEP_SECONDS)},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

REST_FRAMEWORK = {
    # Token first: an anonymous API call then gets 401 with "WWW-Authenticate: Token".
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "labeling.api.schema.TagloopSchema",  # + the common error answers
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer", "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "labeling.api.parsers.BoundedJSONParser",  # JSONParser within DATA_UPLOAD_MAX_MEMORY_SIZE
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # No default throttles: only the token endpoint (tagloop.security.ObtainToken) is rate limited.
    "DEFAULT_THROTTLE_RATES": {"auth_token": TAGLOOP_TOKEN_RATE},
    "NUM_PROXIES": TAGLOOP_NUM_PROXIES,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "tagloop API",
    "DESCRIPTION": "Image tagging with a model in the loop. Authenticate with `Authorization: Token <key>` "
    "(manage.py drf_create_token USER, or POST /api/v1/auth/token/) or a browser session.",
    "VERSION": "1",
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    "PATH_CONVERTER_OVERRIDES": {"id": int},  # labeling.api.urls.IdConverter: ids are integers
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"client_errors_short": {"()": "tagloop.logs.ClientErrorsWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.request": {"filters": ["client_errors_short"]},
    },
}

VAR_DIR.mkdir(parents=True, exist_ok=True)
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing one
