"""Django admin: superusers see everything; a client admin (staff user with the admin role)
sees and edits only the taxonomies, tags and memberships of their own clients."""
from __future__ import annotations

from django.contrib import admin

from .models import Client, ImportJob, Membership, ModelVersion, Role, Tag, Taxonomy, TrainingRun


def admin_client_ids(user) -> list[int]:
    return list(Membership.objects.filter(user=user, role=Role.ADMIN).values_list("client_id", flat=True))


class ClientScopedAdmin(admin.ModelAdmin):
    client_path = "client"

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        return qs.filter(**{f"{self.client_path}__in": admin_client_ids(request.user)})

    def has_module_permission(self, request):
        return request.user.is_superuser or bool(admin_client_ids(request.user))

    def _own(self, request, obj=None) -> bool:
        if request.user.is_superuser:
            return True
        ids = admin_client_ids(request.user)
        if obj is None:
            return bool(ids)
        client_id = obj
        for part in self.client_path.split("__"):
            client_id = getattr(client_id, part)
        return client_id.pk in ids

    has_view_permission = has_change_permission = has_add_permission = _own

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if not request.user.is_superuser:
            ids = admin_client_ids(request.user)
            if db_field.name == "client":
                kwargs["queryset"] = Client.objects.filter(pk__in=ids)
            elif db_field.name in ("taxonomy", "parent"):
                model = db_field.related_model
                path = "client" if model is Taxonomy else "taxonomy__client"
                kwargs["queryset"] = model.objects.filter(**{f"{path}__in": ids})
            elif db_field.name == "user":
                # Users are global: list only people who already work in one of the admin's
                # clients, never everyone on the site. New people are added on the members page.
                kwargs["queryset"] = db_field.related_model.objects.filter(
                    memberships__client__in=ids).distinct().order_by("username")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class TagInline(admin.TabularInline):
    model = Tag
    fk_name = "taxonomy"
    extra = 1
    fields = ("name", "parent", "position", "retired")


@admin.register(Taxonomy)
class TaxonomyAdmin(ClientScopedAdmin):
    list_display = ("name", "client", "kind", "retrain_threshold", "labels_since_train", "live_model")
    list_filter = ("kind",)
    fields = ("client", "name", "kind", "retrain_threshold")
    inlines = [TagInline]

    def get_readonly_fields(self, request, obj=None):
        # Labels and models were made under the kind's rules: it is fixed once they exist.
        return ("kind",) if obj is not None and obj.kind_locked() else ()


@admin.register(Tag)
class TagAdmin(ClientScopedAdmin):
    client_path = "taxonomy__client"
    list_display = ("path", "taxonomy", "retired", "position")
    list_filter = ("retired",)
    search_fields = ("name",)


@admin.register(Membership)
class MembershipAdmin(ClientScopedAdmin):
    list_display = ("user", "client", "role")
    list_filter = ("role",)


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(ModelVersion)
class ModelVersionAdmin(ClientScopedAdmin):
    client_path = "taxonomy__client"
    list_display = ("taxonomy", "version", "backbone", "n_labels", "created")
    readonly_fields = [f.name for f in ModelVersion._meta.fields]


@admin.register(TrainingRun)
class TrainingRunAdmin(ClientScopedAdmin):
    client_path = "taxonomy__client"
    list_display = ("id", "taxonomy", "state", "trigger", "progress", "created", "finished")
    list_filter = ("state",)
    readonly_fields = [f.name for f in TrainingRun._meta.fields]


@admin.register(ImportJob)
class ImportJobAdmin(ClientScopedAdmin):
    list_display = ("id", "client", "source", "state", "n_created", "n_duplicates", "n_failed", "created")
    list_filter = ("state",)
    readonly_fields = [f.name for f in ImportJob._meta.fields]
