"""Django admin: superusers see everything; a client admin (staff user with the admin role)
sees and edits only the taxonomies, tags and memberships of their own clients."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.forms.models import BaseInlineFormSet
from django.shortcuts import redirect

from .models import Client, ImportJob, Membership, ModelVersion, Role, Tag, Taxonomy, TrainingRun
from .services import members


def admin_client_ids(user) -> list[int]:
    if not user.is_authenticated:  # e.g. the login page after a wrong password asks for the app list
        return []
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


class TagFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        """Two rows of one submission with one name under one parent: each form's own check
        only sees the saved tags, and the database would refuse the second with a 500."""
        super().clean()
        seen: set[tuple[int | None, str]] = set()
        for form in self.forms:
            name = (form.cleaned_data or {}).get("name") if form.is_valid() else None
            if not name:
                continue
            parent = form.cleaned_data.get("parent")
            key = (parent.pk if parent else None, name.strip().lower())
            if key in seen:
                form.add_error("name", Tag.name_taken(key[0]))
            seen.add(key)


class TagInline(admin.TabularInline):
    """A taxonomy's tags on its own page. Client admins have no Django model permissions, so
    the inline asks the same question as the taxonomy page: is this one of your clients?
    Tags are retired here, not deleted (the Tags list deletes unused ones)."""

    model = Tag
    fk_name = "taxonomy"
    formset = TagFormSet
    extra = 3
    fields = ("name", "parent", "position", "retired")
    can_delete = False

    def _own(self, request, obj=None) -> bool:
        if request.user.is_superuser:
            return True
        ids = admin_client_ids(request.user)
        return obj.client_id in ids if isinstance(obj, Taxonomy) else bool(ids)

    has_view_permission = has_change_permission = has_add_permission = _own

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "parent":  # a parent from this taxonomy only (new taxonomy: none yet)
            taxonomy_id = (request.resolver_match.kwargs.get("object_id") if request.resolver_match else None)
            kwargs["queryset"] = Tag.objects.filter(taxonomy_id=taxonomy_id if str(taxonomy_id or "").isdigit() else None)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Taxonomy)
class TaxonomyAdmin(ClientScopedAdmin):
    list_display = ("name", "client", "kind", "retrain_threshold", "labels_since_train", "live_model")
    list_filter = ("kind",)
    fields = ("client", "name", "kind", "retrain_threshold", "local_matching")
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

    def has_delete_permission(self, request, obj=None):
        # A tag nothing has used yet (a typo, a test) may go. One in use is retired instead:
        # deleting it would take it off every label that carries it and out of the models.
        if request.user.is_superuser:
            return True
        return obj is not None and self._own(request, obj) and not obj.in_use()

    def delete_view(self, request, object_id, extra_context=None):
        tag = self.get_object(request, object_id)
        if tag is not None and not request.user.is_superuser and tag.in_use():
            # say why, rather than a bare "not allowed" that reads like a role problem
            messages.error(request, f"“{tag.path}” is used by labels or models, so it can't be deleted: "
                                    "tick Retired instead (it is no longer offered; its labels stay).")
            return redirect("admin:labeling_tag_change", tag.pk)
        return super().delete_view(request, object_id, extra_context)


class ReadOnlyForClientAdmins(ClientScopedAdmin):
    """Records the app makes (models, runs, imports; every field read-only): client admins may
    look, nobody adds one here (an empty one would not even save), only superusers change."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser


class MembershipForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ("user", "client", "role")

    def clean(self):
        cleaned = super().clean()
        # The members page's rule (labeling.services.members): a client keeps one admin.
        # self.instance still holds the saved role here; save_model checks again under a lock.
        old = self.instance
        if (old.pk and old.role == Role.ADMIN and cleaned.get("role") != Role.ADMIN
                and not Membership.objects.filter(client_id=old.client_id, role=Role.ADMIN).exclude(pk=old.pk).exists()):
            raise forms.ValidationError(f"{old.user.username} is the only admin of {old.client.name}; "
                                        "make someone else admin first.")
        return cleaned


@admin.register(Membership)
class MembershipAdmin(ClientScopedAdmin):
    """Same rules as the client's Members page: role changes go through
    labeling.services.members (one admin per client, under a row lock; admins get staff status).
    Who and which client are fixed once added; removing is the Members page's (it ends leases)."""

    form = MembershipForm
    list_display = ("user", "client", "role")
    list_filter = ("role",)

    def get_readonly_fields(self, request, obj=None):
        return ("user", "client") if obj is not None else ()

    def save_model(self, request, obj, form, change):
        if not change:
            obj.save()
        members.change_role(obj, obj.role)  # also grants an admin staff status


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyForClientAdmins):
    client_path = "taxonomy__client"
    list_display = ("taxonomy", "version", "backbone", "n_labels", "created")
    readonly_fields = [f.name for f in ModelVersion._meta.fields]


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyForClientAdmins):
    client_path = "taxonomy__client"
    list_display = ("id", "taxonomy", "state", "trigger", "progress", "created", "finished")
    list_filter = ("state",)
    readonly_fields = [f.name for f in TrainingRun._meta.fields]


@admin.register(ImportJob)
class ImportJobAdmin(ReadOnlyForClientAdmins):
    list_display = ("id", "client", "source", "state", "n_created", "n_duplicates", "n_failed", "created")
    list_filter = ("state",)
    readonly_fields = [f.name for f in ImportJob._meta.fields]
