"""Serializers of the REST API: outputs mirror the models, inputs are bounded and name the
field that is wrong."""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import (Asset, BulkAction, Label, LabelEvent, ModelVersion, Role, Tag, Taxonomy, TrainingRun,
                      local_matching_problem, parent_problem, tag_name_problem)
from ..services import audit
from .base import MAX_ID

MAX_TAGS_PER_LABEL = 100
MAX_BULK = 500
MAX_TOP = 20


def IdField(**kwargs) -> serializers.IntegerField:  # noqa: N802 - reads like a field class
    return serializers.IntegerField(min_value=1, max_value=MAX_ID, **kwargs)


class BoundedListField(serializers.ListField):
    """Checks max_length before validating each element: DRF validates every child first, so a
    list of two million ids would cost seconds of CPU before being refused."""

    def to_internal_value(self, data):
        if self.max_length is not None and isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


def id_list(max_length: int, **kwargs) -> serializers.ListField:
    return BoundedListField(child=IdField(), max_length=max_length, **kwargs)


# --- clients, taxonomies, tags --------------------------------------------------------------


class ClientSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class TaxonomySerializer(serializers.ModelSerializer):
    live_model = serializers.IntegerField(source="live_model_id", read_only=True, allow_null=True,
                                          help_text="id of the live model version")
    live_version = serializers.SerializerMethodField()

    class Meta:
        model = Taxonomy
        fields = ["id", "name", "kind", "retrain_threshold", "local_matching", "labels_since_train", "live_model",
                  "live_version", "created"]
        read_only_fields = ["labels_since_train", "created"]
        extra_kwargs = {"retrain_threshold": {"min_value": 1, "max_value": 1_000_000}, "name": {"max_length": 200}}
        # The (client, name) constraint is checked by validate_name: the client is not a field.
        validators: list = []

    def get_live_version(self, obj: Taxonomy) -> int | None:
        return obj.live_model.version if obj.live_model_id and obj.live_model else None

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("may not be blank")
        client = self.context["client"]
        clash = Taxonomy.objects.filter(client=client, name__iexact=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError("a taxonomy of this client already has this name")
        return value

    def validate(self, data: dict) -> dict:
        kind = data.get("kind", self.instance.kind if self.instance else Taxonomy.Kind.SINGLE)
        local = data.get("local_matching", self.instance.local_matching if self.instance else False)
        if problem := local_matching_problem(kind, local):
            raise serializers.ValidationError({"local_matching": [problem]})
        return data

    def validate_kind(self, value: str) -> str:
        if self.instance is not None and value != self.instance.kind and self.instance.kind_locked():
            raise serializers.ValidationError(
                "can't change once the taxonomy has labels or models; create a new taxonomy instead")
        return value


class TagSerializer(serializers.ModelSerializer):
    path = serializers.CharField(read_only=True)
    parent = serializers.IntegerField(source="parent_id", required=False, allow_null=True, min_value=1,
                                      max_value=MAX_ID)

    class Meta:
        model = Tag
        fields = ["id", "name", "path", "parent", "retired", "position"]
        extra_kwargs = {"position": {"min_value": -1_000_000, "max_value": 1_000_000}, "name": {"max_length": 200}}
        validators: list = []

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("may not be blank")
        problem = tag_name_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate(self, attrs: dict) -> dict:
        # Sibling names are unique whatever their case ('shoes / nike' and 'logos / nike' may
        # both be): a rename, a move or both can clash, so the check needs the final pair.
        name = attrs.get("name", self.instance.name if self.instance is not None else "")
        parent_id = attrs["parent_id"] if "parent_id" in attrs else getattr(self.instance, "parent_id", None)
        clash = Tag.objects.filter(taxonomy=self.context["taxonomy"], parent_id=parent_id, name__iexact=name)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError({"name": [Tag.name_taken(parent_id)]})
        return attrs

    def validate_parent(self, value: int | None) -> int | None:
        if value is None:
            return None
        parent = Tag.objects.filter(taxonomy=self.context["taxonomy"], pk=value).first()
        if parent is None:
            raise serializers.ValidationError("not a tag of this taxonomy")
        if problem := parent_problem(self.instance.pk if self.instance is not None else None, parent):
            raise serializers.ValidationError(problem)
        return value


# --- assets, labels, suggestions ------------------------------------------------------------


class ScoredTagSerializer(serializers.Serializer):
    tag = serializers.IntegerField()
    name = serializers.CharField()
    prob = serializers.FloatField()


class LabelSerializer(serializers.ModelSerializer):
    tags = serializers.SerializerMethodField()
    user = serializers.SerializerMethodField()

    class Meta:
        model = Label
        fields = ["id", "asset", "taxonomy", "tags", "user", "source", "batch", "is_current", "audit", "created"]
        extra_kwargs = {"audit": {"help_text": "an audit label: the queue served the asset in its random 'audit' "
                                               "order to its author (the dashboard's audit estimate counts it)"}}

    def get_tags(self, obj: Label) -> list[int]:
        return sorted(t.pk for t in obj.tags.all())

    def get_user(self, obj: Label) -> str | None:
        return obj.user.get_username() if obj.user_id and obj.user else None


class SuggestionSerializer(serializers.Serializer):
    model_version = serializers.IntegerField(help_text="ModelVersion id")
    version = serializers.IntegerField()
    uncertainty = serializers.FloatField()
    suggested = serializers.ListField(child=serializers.IntegerField(), help_text="tag ids the model proposes")
    top = ScoredTagSerializer(many=True)


def absolute(context: dict, url: str) -> str:
    """A media link an API client can follow as is (with its token): absolute when the
    serializer knows the request."""
    request = context.get("request")
    return request.build_absolute_uri(url) if request is not None else url


class MediaLinkField(serializers.CharField):
    """An image or thumbnail link of the web app (session or ``Authorization: Token``)."""

    def to_representation(self, value: str) -> str:
        return absolute(self.context, str(value))


class AssetSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="original_name")
    image = serializers.SerializerMethodField()
    thumbnail = serializers.SerializerMethodField()
    label = serializers.SerializerMethodField(help_text="current label in ?taxonomy= (null: unlabeled)")
    suggestion = serializers.SerializerMethodField(help_text="live model's suggestion in ?taxonomy=")

    class Meta:
        model = Asset
        fields = ["id", "name", "sha256", "byte_size", "width", "height", "format", "embedded_with", "created",
                  "image", "thumbnail", "label", "suggestion"]

    def get_image(self, obj: Asset) -> str:
        return absolute(self.context, reverse("asset_image", args=[obj.pk]))

    def get_thumbnail(self, obj: Asset) -> str:
        return absolute(self.context, reverse("asset_thumb", args=[obj.pk]))

    @extend_schema_field(LabelSerializer(allow_null=True))
    def get_label(self, obj: Asset) -> dict | None:
        label = self.context.get("labels", {}).get(obj.pk)
        return LabelSerializer(label).data if label else None

    @extend_schema_field(SuggestionSerializer(allow_null=True))
    def get_suggestion(self, obj: Asset) -> dict | None:
        return self.context.get("suggestions", {}).get(obj.pk)


class LabelEventSerializer(serializers.ModelSerializer):
    user = serializers.SerializerMethodField()

    class Meta:
        model = LabelEvent
        fields = ["id", "action", "user", "label", "before", "after", "source", "created"]

    def get_user(self, obj: LabelEvent) -> str | None:
        return obj.user.get_username() if obj.user_id and obj.user else None


class LabelCreateSerializer(serializers.Serializer):
    asset = IdField()
    tags = id_list(MAX_TAGS_PER_LABEL, required=False,
                   help_text="tag ids; leave out with accept_suggestion. Multi-label: [] = no tag applies")
    accept_suggestion = serializers.BooleanField(
        default=False, help_text="store what the live model suggests; an asset that has a label answers 409 "
                                 "unless base_label names the label to replace")
    base_label = IdField(
        required=False, allow_null=True,
        help_text="the current label id you saw (null: none). If it changed meanwhile: 409 with the current label.",
    )
    audit = serializers.BooleanField(
        default=False, help_text="you got the asset from the queue in order=audit (a random sample of the unlabeled "
                                 "library): the label counts toward the audit estimate. Honoured only when the queue "
                                 "served it to you in that order, it was unlabeled and the live model scored it; "
                                 "the reply's `audit` says whether it was. The audit is blind: send the tags the "
                                 "image shows (not accept_suggestion); the server compares them with the suggestion")

    def validate(self, data: dict) -> dict:
        if data.get("accept_suggestion") and data.get("audit"):
            raise serializers.ValidationError({"audit": ["an audit label is the operator's own answer: send its tags, "
                                                         "not accept_suggestion"]})
        if data.get("accept_suggestion") and data.get("tags"):
            raise serializers.ValidationError({"tags": ["leave out with accept_suggestion"]})
        if not data.get("accept_suggestion") and "tags" not in data:
            # [] is an answer in a multi-label taxonomy ("no tag applies"); the service refuses
            # it for a single-label one
            raise serializers.ValidationError({"tags": ["pick at least one tag (or set accept_suggestion)"]})
        return data


class LabelConflictSerializer(serializers.Serializer):
    detail = serializers.CharField()
    current = LabelSerializer(allow_null=True)


class BulkLabelSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=BulkAction.Kind.choices)
    assets = id_list(MAX_BULK, min_length=1)
    tags = id_list(MAX_TAGS_PER_LABEL, required=False, help_text="for apply_tags")

    def validate(self, data: dict) -> dict:
        if data["kind"] == BulkAction.Kind.APPLY_TAGS and not data.get("tags"):
            raise serializers.ValidationError({"tags": ["apply_tags needs at least one tag"]})
        if data["kind"] == BulkAction.Kind.ACCEPT_SUGGESTIONS and data.get("tags"):
            raise serializers.ValidationError({"tags": ["leave out with accept"]})
        return data


class BulkResultSerializer(serializers.Serializer):
    bulk_action = serializers.IntegerField()
    n_labels = serializers.IntegerField()
    skipped = serializers.DictField(child=serializers.CharField(), help_text="asset id -> why not labeled")


class QueueItemSerializer(serializers.Serializer):
    asset = serializers.IntegerField()
    name = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    uncertainty = serializers.FloatField(allow_null=True)
    suggested = serializers.ListField(child=serializers.IntegerField())
    tags = ScoredTagSerializer(many=True)
    image = MediaLinkField()
    thumb = MediaLinkField()
    audit = serializers.BooleanField(help_text="served in the audit order: send audit=true with its label. Blind: "
                                               "suggested and tags are empty and uncertainty null")


# --- uploads, jobs, predictions -------------------------------------------------------------


class UploadSerializer(serializers.Serializer):
    files = serializers.ListField(child=serializers.FileField(allow_empty_file=False), min_length=1)
    labels_taxonomy = IdField(required=False, allow_null=True,
                              help_text="tag each file by its folder name in this taxonomy")


class ImportJobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.CharField()
    done = serializers.BooleanField()
    source = serializers.CharField()
    total = serializers.IntegerField()
    processed = serializers.IntegerField()
    percent = serializers.IntegerField()
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    failed = serializers.IntegerField()
    labeled = serializers.IntegerField()
    error = serializers.CharField(allow_blank=True)
    errors = serializers.ListField(child=serializers.DictField())
    started = serializers.CharField(allow_null=True)
    finished = serializers.CharField(allow_null=True)


class PredictRequestSerializer(serializers.Serializer):
    images = serializers.ListField(child=serializers.FileField(allow_empty_file=False), min_length=1)
    top = serializers.IntegerField(min_value=1, max_value=MAX_TOP, default=3,
                                   help_text="tags per image (a form field, or ?top= in the URL)")


class PredictionSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    name = serializers.CharField()
    tags = ScoredTagSerializer(many=True)
    suggested = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="the tag ids the app would suggest: the top tag, or for multi-label every tag over its threshold")


class PredictResultSerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    version = serializers.IntegerField()
    predictions = PredictionSerializer(many=True)


class VersionAuditSerializer(serializers.Serializer):
    drawn = serializers.IntegerField(help_text="images served in the audit order while this version was live")
    audited = serializers.IntegerField(help_text="audit labels that answered this version, current or not")
    unanswered = serializers.IntegerField(help_text="drawn - audited: skipped, lapsed, or labeled in another order")
    right = serializers.IntegerField(help_text="audited ones whose (blind) answer was the suggested tag "
                                               "(multi-label: exactly the suggested tags)")
    rate = serializers.FloatField(allow_null=True, help_text="right / audited (null: none answered)")
    ci95 = serializers.ListField(child=serializers.FloatField(), allow_null=True, help_text="Wilson 95 % of rate")
    bounds95 = serializers.ListField(child=serializers.FloatField(), help_text=(
        "[low, high] whatever the unanswered are: Wilson low of right / drawn (all of them wrong), Wilson high of "
        "(right + unanswered) / drawn (all right); ci95 when none is unanswered"))


class ModelVersionSerializer(serializers.ModelSerializer):
    is_live = serializers.SerializerMethodField()
    audit = serializers.SerializerMethodField(
        help_text="how often this version's suggestions were right on a random sample of the unlabeled library (the "
                  "review queue's audit order); null: nothing drawn yet. Unlike the held-out scores in `summary`, "
                  "which come from the queue's hardest picks, this estimates the library as a whole")
    summary = serializers.SerializerMethodField(
        help_text="headline metrics on held-out labels; ``local`` (taxonomies with local matching): the weight of "
                  "the keypoint matches, the number of template images, and ``score_without`` them")

    class Meta:
        model = ModelVersion
        fields = ["id", "version", "backbone", "n_labels", "label_watermark", "created", "is_live", "summary", "audit"]

    def get_is_live(self, obj: ModelVersion) -> bool:
        return obj.taxonomy.live_model_id == obj.pk

    @extend_schema_field(VersionAuditSerializer(allow_null=True))
    def get_audit(self, obj: ModelVersion) -> dict | None:
        # the views read every version's once (context "audit": services.audit.by_version)
        audits = self.context["audit"] if "audit" in self.context else audit.by_version(obj.taxonomy)
        found = audits.get(obj.version)
        return VersionAuditSerializer(found).data if found else None

    def get_summary(self, obj: ModelVersion) -> dict:
        m = obj.metrics or {}
        keys = ("n", "n_train", "n_holdout", "accuracy", "accuracy_ci95", "top3_accuracy", "top3_ci95",
                "balanced_accuracy", "macro_f1", "micro_f1", "decision", "local")
        return {k: m[k] for k in keys if k in m}


class ModelVersionDetailSerializer(ModelVersionSerializer):
    metrics = serializers.JSONField(help_text="ml.metrics report: per_class, confusion, labels, CIs, ...")

    class Meta(ModelVersionSerializer.Meta):
        fields = ModelVersionSerializer.Meta.fields + ["tag_ids", "metrics"]


class TrainingRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = TrainingRun
        fields = ["id", "state", "trigger", "progress", "message", "error", "labels_consumed", "model_version",
                  "metrics", "created", "started", "finished"]


# --- members --------------------------------------------------------------------------------

class MemberSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True, help_text="membership id")
    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)
    role = serializers.ChoiceField(choices=Role.choices)
    last_login = serializers.DateTimeField(source="user.last_login", read_only=True, allow_null=True)


class MemberCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, help_text="an existing user, or the name of a new one")
    email = serializers.EmailField(required=False, allow_blank=True, max_length=254,
                                   help_text="stored for a new user only")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.OPERATOR)


class MemberCreatedSerializer(MemberSerializer):
    password = serializers.CharField(read_only=True, allow_null=True,
                                     help_text="the new user's password, given out only in this reply; "
                                               "null when the user already existed")
