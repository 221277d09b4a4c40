"""What a retrain learns from and what it is judged on (services.training).

``collect`` reads the current labels as targets over the active tags, and the ``Dataset`` it
returns decides which of them are held out. The run (``training._execute``), the up-front
check (``training.not_ready``) and the dashboard's gallery all go through here, so none of
them can disagree with the others about the split.

The held-out rule, in this order:

1. the asset's content hash puts it in the held-out bucket (``ml.promotion.is_holdout``):
   fixed per asset, so a held-out asset never leaks into a later model's training set (but
   see near-duplicates below);
2. unless its label was made by accepting the model's suggestions in bulk: nobody looked at
   that image, so as "truth" it would grade the next model against its predecessor's
   guesses (review finding 5: +13 points of accuracy that were not there). It still trains.
   A bulk *apply* of tags a person picked is that person's decision, and can be held out;
3. unless one of its tags has no positive among the training labels: that tag would never be
   learned (a fixed probability of 0), and the held-out label would only count an error no
   model could avoid (finding 8). Such labels train instead, and the run says how many;
4. below ``ml.promotion.can_compare`` held-out labels nothing is compared: all of them train.

Near-duplicates (a re-encoded, resized or lightly cropped copy of one photo) have other hashes,
so rule 1 alone would train one copy and hold out its twin: the held-out score would then
partly measure memory. So the rules apply to groups (``duplicates.groups_among``: the rule of
``duplicates.groups``, among this dataset's labeled assets only), and a group is never split:
rule 1 draws its bucket from its member with the lowest asset id; rule 2 keeps the whole group
training when one member is a bulk accept (``holdout_split``: held out only if every member
may be); rule 3 moves whole groups. Accepted edge case: groups are found afresh on each run,
so an older twin labeled later (a new lowest id) or a label joining two groups can change a
group's side. An asset the live model trained on may then be held out: that favours the live
model in the comparison, so at worst a better model waits (conservative). One held out before
may train: it then judges no later model. The run records its held-out assets
(``holdout_assets`` in the metrics) for the dashboard's gallery.

Multi-label answers of a tag made before the tag existed are unknown, not "no" (finding 3):
``Dataset.known`` masks them out of the loss and out of the held-out scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

# the bucket and rules 3-4 live in ml.promotion, so bench/gate.py simulates the same split
from ml.promotion import can_compare, holdout_split, is_holdout

from ..models import BulkAction, Label, Taxonomy
from . import duplicates


def may_hold_out(sha256: str, batch_kind: str | None) -> bool:
    """Rules 1 and 2, for one label: the bucket of ``sha256`` (its group's), and not an
    unreviewed bulk accept. Alone, with the asset's own hash, it is the split of the versions
    trained before near-duplicate groups (the dashboard's gallery still reads them so)."""
    return batch_kind != BulkAction.Kind.ACCEPT_SUGGESTIONS and is_holdout(sha256)


@dataclass
class Dataset:
    asset_ids: np.ndarray
    label_ids: np.ndarray  # creation order of the current labels (for the savings replay)
    eligible: np.ndarray  # bool: may be held out (rules 1 and 2)
    y: np.ndarray  # (n,) class index, or (n, k) 0/1 for multi-label
    tag_ids: list[int]
    known: np.ndarray | None = None  # multi-label (n, k) bool: False = the tag did not exist yet
    groups: np.ndarray | None = None  # (n,) near-duplicate group (its lowest asset id): one side each
    holdout: np.ndarray = field(init=False)  # bool: held out for evaluation (rules 1 to 3)
    moved: np.ndarray = field(init=False)  # bool: in the bucket, but trains (rule 3)
    untaught: np.ndarray = field(init=False)  # (k,) bool: tags that only held-out labels had

    def __post_init__(self) -> None:
        self.holdout, self.moved, self.untaught = holdout_split(self.eligible, self.positives(), self.groups)

    def positives(self) -> np.ndarray:
        """(n, k) bool: the row says yes to the tag (one-hot for single-label). A "yes" is
        always known, so the rule needs no mask."""
        if self.y.ndim == 2:
            return self.y > 0
        return np.arange(len(self.tag_ids))[None, :] == self.y[:, None]

    @property
    def compared(self) -> bool:
        """Whether enough labels are held out to compare models (rule 4)."""
        return can_compare(int(self.holdout.sum()))

    @property
    def train_mask(self) -> np.ndarray:
        return ~self.holdout if self.compared else np.ones(len(self.y), dtype=bool)

    def subset(self, keep: np.ndarray) -> Dataset:
        """The rows in ``keep``, split again: a dropped row may have been a tag's only training label."""
        known = None if self.known is None else self.known[keep]
        groups = None if self.groups is None else self.groups[keep]
        return Dataset(self.asset_ids[keep], self.label_ids[keep], self.eligible[keep], self.y[keep],
                       self.tag_ids, known, groups)

    def split_note(self, names: list[str]) -> str:
        """One line for the run's decision when rule 3 moved labels (empty otherwise)."""
        n = int(self.moved.sum())
        if not n or not self.compared:
            return ""  # nothing moved, or every label trains anyway
        tags = ", ".join(name for name, untaught in zip(names, self.untaught) if untaught)
        return f"{n} held-out label{'s' if n != 1 else ''} trained instead, as no other label taught {tags}"


def collect(taxonomy: Taxonomy, watermark: int | None = None, near_duplicates: bool = True) -> Dataset:
    """Current labels up to ``watermark`` (None: all) as targets over the active tags. In a
    multi-label taxonomy a tag implies its parents: an image labeled "vehicle / car" is a
    vehicle too, and the "vehicle" classifier learns from it. Two queries (labels, their tag
    rows), no model instances, plus the near-duplicate search (seconds at 10k labels), which
    ``near_duplicates=False`` leaves out: each asset is then its own group."""
    active = list(taxonomy.active_tags().values_list("id", "created"))
    tag_ids = [t for t, _ in active]
    index = {t: i for i, t in enumerate(tag_ids)}
    parent = dict(taxonomy.tags.values_list("id", "parent_id")) if taxonomy.multilabel else {}
    current = Label.objects.filter(taxonomy=taxonomy, is_current=True)
    if watermark is not None:
        current = current.filter(id__lte=watermark)
    tags_of: dict[int, list[int]] = {}
    for label_id, tag_id in Label.tags.through.objects.filter(label__in=current) \
            .values_list("label_id", "tag_id").order_by("label_id", "tag_id").iterator(chunk_size=5000):
        tags_of.setdefault(label_id, []).append(tag_id)
    ids, label_ids, shas, kinds, created, rows = [], [], [], [], [], []
    for label_id, asset_id, sha, made, batch_kind in current.order_by("asset_id").values_list(
            "id", "asset_id", "asset__sha256", "created", "batch__kind").iterator(chunk_size=5000):
        tags = tags_of.get(label_id, [])
        cols = _columns(tags, index, parent)
        if not cols and (tags or not taxonomy.multilabel):
            continue  # all its tags were retired since (a multi-label "no tag" label is a negative)
        rows.append(cols)
        ids.append(asset_id)
        label_ids.append(label_id)
        shas.append(sha)
        kinds.append(batch_kind)
        created.append(made)
    y = _targets(rows, len(tag_ids), taxonomy.multilabel)
    known = _known(y, created, [c for _, c in active]) if taxonomy.multilabel else None
    asset_ids = np.array(ids, dtype=np.int64)
    groups = duplicates.groups_among(taxonomy.client_id, asset_ids) if near_duplicates else asset_ids
    return Dataset(asset_ids, np.array(label_ids, dtype=np.int64), _eligible(asset_ids, groups, shas, kinds),
                   y, tag_ids, known, groups)


def _eligible(asset_ids: np.ndarray, groups: np.ndarray, shas: list[str], kinds: list[str | None]) -> np.ndarray:
    """Rules 1 and 2 per row, the bucket taken from the group's lowest asset id (a group id is
    its lowest member's id, and every member is a row): one draw for the whole group, which
    stays put while new imports (higher ids) join it. holdout_split then keeps a group with a
    bulk-accepted member out of the held-out side altogether."""
    row_of = {a: i for i, a in enumerate(asset_ids.tolist())}
    return np.array([may_hold_out(shas[row_of[g]], kind) for g, kind in zip(groups.tolist(), kinds)], dtype=bool)


def _known(y: np.ndarray, label_created: list[datetime], tag_created: list[datetime | None]) -> np.ndarray:
    """(n, k): False where a label says "no" to a tag made after it: whoever labeled the image
    could not pick that tag. A "yes" is always known. Tags made before Tag.created was recorded
    have None, and keep every answer as before (masking them all would throw away real "no"s)."""
    made = np.array([[c >= t if t is not None else True for t in tag_created] for c in label_created], dtype=bool)
    known = made.reshape(y.shape) if len(label_created) else np.ones(y.shape, dtype=bool)
    return known | (y > 0)


def _columns(tag_ids: list[int], index: dict[int, int], parent: dict[int, int | None]) -> list[int]:
    """A label's tags (and, multi-label, their parents) as output columns; inactive ones left out."""
    return [index[t] for t in _with_ancestors(tag_ids, parent) if t in index]


def _targets(rows: list[list[int]], n_tags: int, multilabel: bool) -> np.ndarray:
    """(n,) class index of each row's one column, or (n, n_tags) 0/1 for multi-label."""
    if not multilabel:
        return np.array([cols[0] for cols in rows], dtype=np.int64)
    y = np.zeros((len(rows), n_tags), dtype=np.float32)
    for i, cols in enumerate(rows):
        y[i, cols] = 1
    return y


def _with_ancestors(tag_ids: list[int], parent: dict[int, int | None]) -> list[int]:
    """The tags and every tag above them (``parent``: empty for single-label taxonomies)."""
    out = dict.fromkeys(tag_ids)
    for t in tag_ids:
        while (t := parent.get(t)) is not None and t not in out:  # a parent cycle is refused on save
            out[t] = None
    return list(out)
