"""tagloop's data model: clients (tenants), taxonomies, assets, labels and the ML jobs.

Vectors live outside the database (see ml.vectorstore); rows hold what is queried.
"""
from __future__ import annotations

import unicodedata

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.db.models import Q
from django.db.models.functions import Lower


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    OPERATOR = "operator", "Operator"
    VIEWER = "viewer", "Viewer"


class Client(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    client = models.ForeignKey(Client, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.OPERATOR)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "client"], name="one_membership_per_client")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.client} ({self.role})"


class Taxonomy(models.Model):
    class Kind(models.TextChoices):
        SINGLE = "single", "Single-label"
        MULTI = "multi", "Multi-label"

    client = models.ForeignKey(Client, models.CASCADE, related_name="taxonomies")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.SINGLE)
    retrain_threshold = models.PositiveIntegerField(
        default=20, validators=[MinValueValidator(1)],
        help_text="Retrain once this many new labels have arrived since the last run."
    )
    local_matching = models.BooleanField(
        default=False,
        help_text="Also match keypoints (SIFT) of each asset against labeled assets and add the matches "
                  "that agree on one geometric transform as evidence: helps tags that are small rigid "
                  "patterns (logos, printed labels). Single-label only; about 3x the CPU time per image.",
    )
    # Incremented in the same transaction as each label; a run subtracts what it consumed,
    # so labels that arrive during a run count toward the next one.
    labels_since_train = models.PositiveIntegerField(default=0)
    live_model = models.ForeignKey(
        "ModelVersion", models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "taxonomies"
        # "Shoe brand" next to "shoe brand" would be two lists an operator cannot tell apart
        constraints = [models.UniqueConstraint(Lower("name"), "client", name="taxonomy_name_per_client_ci",
                                               violation_error_message="a taxonomy of this client already has this name")]

    def __str__(self) -> str:
        return f"{self.client.slug}/{self.name}"

    @property
    def multilabel(self) -> bool:
        return self.kind == self.Kind.MULTI

    def active_tags(self) -> models.QuerySet["Tag"]:
        return self.tags.filter(retired=False).order_by("position", "name")

    def clean(self) -> None:
        super().clean()
        if problem := local_matching_problem(self.kind, self.local_matching):
            raise ValidationError({"local_matching": problem})

    def kind_locked(self) -> bool:
        """Single vs multi-label is fixed once labels or models exist: they were made under its
        rules (one tag per asset, or a sigmoid head with per-tag thresholds)."""
        return self.pk is not None and (self.labels.exists() or self.versions.exists())


def local_matching_problem(kind: str, local_matching: bool) -> str | None:
    """Keypoint matches say which tag a photo shows: a multi-label taxonomy would need to know
    which of a photo's tags a matched pattern is, so its runs leave matching out. Refused
    rather than accepted and ignored."""
    if local_matching and kind == Taxonomy.Kind.MULTI:
        return "for single-label taxonomies only (a match can't tell which of several tags it shows)"
    return None


def tag_name_problem(name: str) -> str | None:
    """Why `name` can't be a tag name, or None. Paths join a tag and its parents with " / " and
    CSV exports join several tags with "|": a name holding either would read as two tags."""
    if "|" in name:
        return "may not contain '|' (it joins several tags in CSV exports)"
    if " / " in name:
        return "may not contain ' / ' (it separates a tag from its parent in tag paths)"
    if name.endswith(" /") or name.startswith("/ "):
        # 'a /' under nothing and 'b' under it make the path 'a / / b', read back as 'a' and '/ b'
        return "may not end with ' /' or start with '/ ' (tag paths would not read back)"
    if not name.strip(" ."):
        return "needs a letter or digit"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return "may not contain control characters (line breaks, tabs)"
    return None


def parent_problem(tag_id: int | None, parent: "Tag") -> str | None:
    """Why ``parent`` can't be the parent of the tag ``tag_id`` (None: a new tag), or None."""
    node, seen = parent, set()  # walk up from the new parent
    while node is not None and node.pk not in seen:
        if tag_id is not None and node.pk == tag_id:
            return "would make the tag its own ancestor"
        seen.add(node.pk)
        node = node.parent
    return None


class Tag(models.Model):
    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="tags")
    name = models.CharField(max_length=200)
    parent = models.ForeignKey("self", models.PROTECT, null=True, blank=True, related_name="children")
    # Retired tags are no longer offered or predicted, but labels that used them stay.
    retired = models.BooleanField(default=False)
    position = models.IntegerField(default=0, help_text="Order in lists, which gives the review page's digit keys; "
                                                         "a new tag left at 0 goes after the others.")
    # A multi-label label made before its taxonomy had this tag says nothing about it: training
    # and the held-out scores treat that "no" as unknown (services.training_data). Null for
    # tags made before this was recorded: their labels' answers are all kept, as before.
    created = models.DateTimeField(auto_now_add=True, null=True)

    class Meta:
        ordering = ["position", "name"]
        # "Nike" next to "nike" would be two tags an operator cannot tell apart in a list; among
        # siblings only, as a hierarchy repeats names ("footwear / nike", "logos / nike"). Two
        # constraints, as a NULL parent never equals another in a unique index.
        constraints = [
            models.UniqueConstraint(Lower("name"), "taxonomy", condition=Q(parent__isnull=True),
                                    name="top_tag_name_per_taxonomy_ci",
                                    violation_error_message="this taxonomy already has a top-level tag with this name"),
            models.UniqueConstraint(Lower("name"), "parent", condition=Q(parent__isnull=False),
                                    name="tag_name_per_parent_ci",
                                    violation_error_message="this tag's parent already has a child with this name"),
        ]

    def __str__(self) -> str:
        return self.path

    def save(self, *args, **kwargs) -> None:
        # A new tag without a place goes after the others: the review page's digit keys follow
        # this order, and one added at position 0 would renumber every key the operators know.
        if self._state.adding and self.position == 0 and self.taxonomy_id:
            last = Tag.objects.filter(taxonomy_id=self.taxonomy_id).aggregate(m=models.Max("position"))["m"]
            if last is not None:
                self.position = last + 1
        # Every way a tag is retired or brought back (the API's PATCH, the admin's inline and tag
        # pages) saves it here: the live model's stored suggestions were computed over the old
        # set of active tags (their top tag, the uncertainty the queue sorts on), so a worker
        # recomputes them once this commits.
        fields = kwargs.get("update_fields")
        was_retired = None if self._state.adding or (fields is not None and "retired" not in fields) else \
            Tag.objects.filter(pk=self.pk).values_list("retired", flat=True).first()
        super().save(*args, **kwargs)
        if was_retired is not None and was_retired != self.retired:
            from . import tasks  # tasks import the models

            taxonomy_id = self.taxonomy_id
            transaction.on_commit(lambda: tasks.enqueue_rescore(taxonomy_id))

    def clean(self) -> None:
        problem = tag_name_problem(self.name or "")
        if problem:
            raise ValidationError({"name": problem})
        if self.parent_id is not None:
            if self.parent.taxonomy_id != self.taxonomy_id:
                raise ValidationError({"parent": "not a tag of this taxonomy"})
            if problem := parent_problem(self.pk, self.parent):
                raise ValidationError({"parent": problem})

    @staticmethod
    def name_taken(parent_id: int | None) -> str:
        """What the constraint below says when ``parent_id``'s children (or the top level) have the name."""
        name = "top_tag_name_per_taxonomy_ci" if parent_id is None else "tag_name_per_parent_ci"
        return next(c for c in Tag._meta.constraints if c.name == name).violation_error_message

    def in_use(self) -> bool:
        """Carried by a label (current or not), predicted by a model version, or a parent: then
        it is retired, never deleted (deleting would take it off labels and out of models)."""
        return (Label.tags.through.objects.filter(tag_id=self.pk).exists() or self.children.exists()
                or any(self.pk in (v.tag_ids or []) for v in ModelVersion.objects.filter(taxonomy_id=self.taxonomy_id)
                       .only("tag_ids")))

    @property
    def path(self) -> str:
        parts, node, seen = [], self, set()
        while node is not None and node.pk not in seen:
            seen.add(node.pk)
            parts.append(node.name)
            node = node.parent
        return " / ".join(reversed(parts))


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class ImportJob(models.Model):
    client = models.ForeignKey(Client, models.CASCADE, related_name="import_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    source = models.CharField(max_length=500, help_text="Folder, ZIP or 'upload'.")
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    labels_from_folders = models.ForeignKey(
        Taxonomy, models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="Turn each file's parent folder name into a label of this taxonomy.",
    )
    total = models.PositiveIntegerField(default=0)
    processed = models.PositiveIntegerField(default=0)
    n_created = models.PositiveIntegerField(default=0)
    n_duplicates = models.PositiveIntegerField(default=0)
    n_failed = models.PositiveIntegerField(default=0)
    n_labeled = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="[{file, error}] per bad file")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"import #{self.pk} {self.source} ({self.state})"

    @property
    def progress(self) -> float:
        return self.processed / self.total if self.total else 0.0


def asset_upload_to(asset: "Asset", filename: str) -> str:
    return f"assets/{asset.client_id}/{asset.sha256[:2]}/{asset.sha256}{_ext(filename)}"


def thumb_upload_to(asset: "Asset", filename: str) -> str:
    return f"thumbs/{asset.client_id}/{asset.sha256[:2]}/{asset.sha256}.jpg"


def _ext(filename: str) -> str:
    dot = filename.rfind(".")
    ext = filename[dot:].lower() if dot >= 0 else ""
    return ext if len(ext) <= 6 and ext[1:].isalnum() else ""


class Asset(models.Model):
    client = models.ForeignKey(Client, models.CASCADE, related_name="assets")
    import_job = models.ForeignKey(ImportJob, models.SET_NULL, null=True, blank=True, related_name="assets")
    file = models.FileField(upload_to=asset_upload_to, max_length=300)
    thumbnail = models.FileField(upload_to=thumb_upload_to, max_length=300, blank=True)
    original_name = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    byte_size = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=16, blank=True)
    # perceptual hash of the thumbnail (ml.phash): finds re-encoded / resized copies
    phash = models.BigIntegerField(null=True, blank=True)
    # Name of the backbone whose vector is in the vector store; blank = not embedded yet.
    embedded_with = models.CharField(max_length=200, blank=True, db_index=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["client", "sha256"], name="asset_once_per_client")]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.pk})"


class ModelVersion(models.Model):
    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    backbone = models.CharField(max_length=200)
    artifact = models.CharField(max_length=500, help_text="Path of the head file under TAGLOOP_MODEL_DIR")
    tag_ids = models.JSONField(help_text="Tag id of each output, in order")
    metrics = models.JSONField(default=dict, blank=True)
    n_labels = models.PositiveIntegerField(default=0)
    label_watermark = models.BigIntegerField(default=0, help_text="Learned from current labels with id <= this")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [models.UniqueConstraint(fields=["taxonomy", "version"], name="version_per_taxonomy")]

    def __str__(self) -> str:
        return f"{self.taxonomy} v{self.version}"


UNPLANNED = 2**31 - 1  # Suggestion.queue_rank of assets outside the planned pages


class Suggestion(models.Model):
    asset = models.ForeignKey(Asset, models.CASCADE, related_name="suggestions")
    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="+")
    model_version = models.ForeignKey(ModelVersion, models.CASCADE, related_name="suggestions")
    probs = models.JSONField(help_text="Probability per output of model_version.tag_ids")
    top1_tag = models.ForeignKey(Tag, models.SET_NULL, null=True, related_name="+")
    top1_prob = models.FloatField()
    margin = models.FloatField()
    entropy = models.FloatField()
    uncertainty = models.FloatField(help_text="0 = sure, 1 = no idea; the queue's order")
    # The queue's first pages after a retrain: 0, 1, 2 ... for the diverse pick of the least
    # sure assets (services.suggesting.plan_queue), UNPLANNED for the rest, which follow by
    # uncertainty.
    queue_rank = models.PositiveIntegerField(default=UNPLANNED)
    # Denormalised from Label so the review queue is one index scan.
    is_labeled = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["asset", "model_version"], name="one_suggestion_per_version")]
        indexes = [
            models.Index(
                fields=["model_version", "queue_rank", "-uncertainty", "id"],
                condition=Q(is_labeled=False),
                name="queue_unlabeled_uncertain",
            ),
            # The API's assets-by-uncertainty listing (keyset on uncertainty, id), labeled or not.
            models.Index(fields=["model_version", "-uncertainty", "id"], name="suggestion_by_uncertainty"),
        ]


class Label(models.Model):
    class Source(models.TextChoices):
        ACCEPTED = "accepted", "Accepted as suggested"
        CORRECTED = "corrected", "Corrected"
        MANUAL = "manual", "Tagged without a suggestion"
        IMPORTED = "imported", "Imported (folder name)"

    asset = models.ForeignKey(Asset, models.CASCADE, related_name="labels")
    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="labels")
    tags = models.ManyToManyField(Tag, related_name="labels")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    suggestion = models.ForeignKey(Suggestion, models.SET_NULL, null=True, blank=True, related_name="+")
    # The version whose suggestion the operator was shown. Suggestions of older versions are
    # pruned after each retrain (and the link above with them); versions are kept, so this one
    # still says which model an "accepted" or "corrected" answered (the dashboard's agreement).
    model_version = models.ForeignKey("ModelVersion", models.SET_NULL, null=True, blank=True, related_name="+")
    batch = models.ForeignKey("BulkAction", models.SET_NULL, null=True, blank=True, related_name="labels")
    # Given to an asset the review queue served in its random "audit" order (services.audit
    # decides, from the lease, never from the client's word alone): these labels estimate how
    # often the live model is right on the unlabeled library. They train like any other.
    audit = models.BooleanField(default=False)
    # Older labels of the same asset stay as history; exactly one is current.
    is_current = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["asset", "taxonomy"], condition=Q(is_current=True), name="one_current_label"
            )
        ]
        indexes = [
            models.Index(fields=["taxonomy", "is_current", "id"]),
            # the audit estimate (services.audit): a few labels among all of a taxonomy's, current
            # or not (a later re-save of an audited image does not take its answer back)
            models.Index(fields=["taxonomy", "model_version"], condition=Q(audit=True), name="label_audit"),
        ]


class TrainingRun(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        PROMOTED = "promoted", "Promoted"
        REJECTED = "rejected", "Not promoted (worse than live)"
        FAILED = "failed", "Failed"

    ACTIVE = (State.QUEUED, State.RUNNING)

    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="runs")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    trigger = models.CharField(max_length=32, default="threshold")
    progress = models.FloatField(default=0.0)
    message = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)
    labels_consumed = models.PositiveIntegerField(default=0)
    model_version = models.ForeignKey(ModelVersion, models.SET_NULL, null=True, blank=True, related_name="+")
    metrics = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # One retrain per taxonomy at a time, enforced by the database itself.
            models.UniqueConstraint(
                fields=["taxonomy"], condition=Q(state__in=["queued", "running"]), name="one_active_run"
            )
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} {self.taxonomy} ({self.state})"


class BulkAction(models.Model):
    """One operator action over many assets (cluster page, map selection, API bulk): stored as
    individual labels that point here, so it can be undone as a whole."""

    class Kind(models.TextChoices):
        APPLY_TAGS = "apply_tags", "Apply tags to all"
        ACCEPT_SUGGESTIONS = "accept", "Accept each suggestion"

    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="bulk_actions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    n_labels = models.PositiveIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    undone = models.DateTimeField(null=True, blank=True)


class LabelEvent(models.Model):
    """History of every label change: who, when, the tags before and after."""

    class Action(models.TextChoices):
        SET = "set", "Labeled"
        UNDO = "undo", "Undone"

    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="label_events")
    asset = models.ForeignKey(Asset, models.CASCADE, related_name="label_events")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    action = models.CharField(max_length=8, choices=Action.choices)
    label = models.ForeignKey(Label, models.SET_NULL, null=True, blank=True, related_name="events")
    before = models.JSONField(null=True, blank=True, help_text="tag ids before (null: unlabeled)")
    after = models.JSONField(null=True, blank=True, help_text="tag ids after (null: unlabeled)")
    source = models.CharField(max_length=16, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["taxonomy", "created"]),
            # undo_last: this user's newest SET event in the taxonomy, without sorting their history
            models.Index(fields=["taxonomy", "user", "action", "-id"], name="labelevent_undo"),
        ]


class Lease(models.Model):
    """An asset shown to one operator is hidden from the others' queues until it expires."""

    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="+")
    asset = models.ForeignKey(Asset, models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    expires = models.DateTimeField(db_index=True)
    # Served to this user in the queue's "audit" order (a random sample): their label of it may
    # count as an audit label (services.audit.served_for_audit).
    audit = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["taxonomy", "asset"], name="one_lease_per_asset")]


class AuditDraw(models.Model):
    """An asset the review queue served in its random "audit" order while ``model_version`` was
    live (services.audit): the sample the audit estimate is over. Written by the server when it
    serves the asset, whoever draws it first and whether or not anyone answers it, so an image
    skipped or left unlabeled still counts as drawn (the estimate's non-response)."""

    taxonomy = models.ForeignKey(Taxonomy, models.CASCADE, related_name="+")
    asset = models.ForeignKey(Asset, models.CASCADE, related_name="+")
    model_version = models.ForeignKey("ModelVersion", models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["taxonomy", "model_version", "asset"], name="one_audit_draw")]


class Clustering(models.Model):
    """One k-means run over a client's vectors. Pages read the current one; a new run is built
    aside and switched in one transaction, so readers never see half a clustering."""

    client = models.ForeignKey(Client, models.CASCADE, related_name="clusterings")
    backbone = models.CharField(max_length=200)
    k = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    is_current = models.BooleanField(default=False)
    stats = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client"], condition=Q(is_current=True), name="one_current_clustering")
        ]


class Cluster(models.Model):
    clustering = models.ForeignKey(Clustering, models.CASCADE, related_name="clusters")
    index = models.PositiveIntegerField()
    size = models.PositiveIntegerField(default=0)
    stats = models.JSONField(default=dict, blank=True, help_text="per taxonomy: unlabeled share, majority, ...")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["clustering", "index"], name="cluster_index")]


class ClusterMember(models.Model):
    cluster = models.ForeignKey(Cluster, models.CASCADE, related_name="members")
    asset = models.ForeignKey(Asset, models.CASCADE, related_name="cluster_memberships")
    distance = models.FloatField(help_text="to the centroid; the cluster page's order")

    class Meta:
        indexes = [models.Index(fields=["cluster", "distance"])]
