"""tagloop: human-in-the-loop image tagging."""
from .celery import app as celery_app

__all__ = ["celery_app"]
