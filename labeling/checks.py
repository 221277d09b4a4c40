"""Start-up checks of tagloop's own settings (run by manage.py check, migrate, runserver)."""
from __future__ import annotations

from django.conf import settings
from django.core import checks

KEY_MAX = 200  # Asset.embedded_with, ModelVersion.backbone, Clustering.backbone


@checks.register()
def views_setting(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """A bad TAGLOOP_VIEWS would otherwise surface as a failed embedding task per import."""
    from ml.multiview import PRODUCT_VIEWS, vector_key

    try:
        key = vector_key(settings.TAGLOOP_BACKBONE, settings.TAGLOOP_VIEWS)
    except ValueError as exc:
        return [checks.Error(f"TAGLOOP_VIEWS={settings.TAGLOOP_VIEWS!r}: {exc}",
                             hint=f"views: {', '.join(PRODUCT_VIEWS)}; e.g. center,flip:mean+tiles2,tiles3:max",
                             id="tagloop.E001")]
    if len(key) > KEY_MAX:
        return [checks.Error(f"TAGLOOP_BACKBONE + TAGLOOP_VIEWS name {len(key)} characters, over {KEY_MAX}: {key}",
                             id="tagloop.E002")]
    return []
