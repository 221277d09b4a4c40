"""Celery application. Broker and options come from Django settings (CELERY_*)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tagloop.settings")

app = Celery("tagloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
