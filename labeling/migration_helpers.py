"""Data steps shared by migrations (kept small and stable: old migrations import them)."""
from __future__ import annotations


def number_case_twins(model, scope: str, max_length: int = 200) -> None:
    """Rows of ``model`` whose names differ only in case within the same ``scope`` (a field
    name, e.g. ``taxonomy_id``) get a number, " (2)", " (3)", ..., so that a case-blind unique
    constraint can be added. The oldest row keeps its name; nothing else changes."""
    taken: dict[tuple, int] = {}
    for row in model.objects.order_by("id"):
        key = (getattr(row, scope), row.name.lower())
        if key not in taken:
            taken[key] = 1
            continue
        n = taken[key]
        while True:
            n += 1
            name = f"{row.name} ({n})"[:max_length]
            if not model.objects.filter(**{scope: getattr(row, scope), "name__iexact": name}).exists():
                break
        taken[key] = n
        model.objects.filter(pk=row.pk).update(name=name)
