"""Second look on a taxonomy with more labels than a page load may score
(TAGLOOP_SECOND_LOOK_INLINE): the page shows the last scores and a worker computes new ones.
The real worker process is in tests/test_loop_worker.py; here the task function is run in
this process where a worker would take the message."""
from __future__ import annotations

import pytest

from .conftest import login
from .test_explore_scale import label_the_rest


@pytest.fixture
def big(explored, settings, monkeypatch):
    """acme's brand taxonomy counts as large (inline limit 5 < its labels); messages to the
    worker are recorded, not delivered, and every score computation is counted."""
    import ml.noise
    from labeling import tasks

    settings.TAGLOOP_SECOND_LOOK_INLINE = 5
    sent: list[int] = []
    monkeypatch.setattr(tasks.second_look, "apply_async", lambda args, **kw: sent.append(args[0]))
    computed: list[int] = []
    real = ml.noise.suspicion_components
    monkeypatch.setattr(ml.noise, "suspicion_components", lambda *a, **kw: computed.append(len(a[1])) or real(*a, **kw))
    explored.sent, explored.computed = sent, computed
    return explored


def page(client, big) -> str:
    r = client.get(f"/c/acme/t/{big.world.brand.pk}/second-look/")
    assert r.status_code == 200
    return r.content.decode()


def test_a_large_taxonomy_s_page_asks_a_worker_once_and_shows_the_scores_it_computed(big, client):
    from labeling import tasks

    tax = big.world.brand
    unseeded = [a for a in big.truth if a not in big.seeded]
    flipped = next(a for a in unseeded if big.truth[a] == "nike")
    label_the_rest(big, user=big.world.olga, wrong={flipped: "adidas"})
    login(client, big.world.olga)

    first = page(client, big)
    assert "Scoring 24 labels" in first and 'id="second-pending"' in first
    assert big.computed == [] and big.sent == [tax.pk]  # the request computed nothing
    assert "Scoring 24 labels" in page(client, big) and big.sent == [tax.pk]  # asked once, not per load

    assert tasks.second_look(tax.pk) is True  # the worker takes the message
    assert big.computed == [24]
    ready = page(client, big)
    assert "check model: " in ready and f'data-asset="{flipped}"' in ready
    assert "second-status" not in ready and "second-pending" not in ready
    assert tasks.second_look(tax.pk) is False and big.computed == [24]  # a redelivery finds them current
    assert big.sent == [tax.pk]


def test_scores_older_than_the_labels_are_shown_while_a_worker_computes_new_ones(big, client):
    from labeling import tasks
    from labeling.services import labels

    tax = big.world.brand
    unseeded = [a for a in big.truth if a not in big.seeded]
    late, changed = unseeded[-1], unseeded[0]
    for asset_id in unseeded[:-1]:
        labels.save_label(tax, big.assets[asset_id], [big.tags[big.truth[asset_id]]], notify=False)
    assert tasks.second_look(tax.pk) is True and big.computed == [23]
    labels.save_label(tax, big.assets[late], [big.tags[big.truth[late]]], notify=False)
    other = next(t for name, t in big.tags.items() if name != big.truth[changed])
    labels.save_label(tax, big.assets[changed], [other], notify=False)  # a correction: its row is stale
    login(client, big.world.olga)

    html = page(client, big)
    assert "These scores are from 23 labels; 1 label made since is being scored" in html
    # the 23 scored rows less the corrected one; the new label is not scored yet
    assert html.count('class="card x-row"') == 22 and f'data-asset="{changed}"' not in html
    assert big.computed == [23] and big.sent == [tax.pk]
    assert tasks.second_look(tax.pk) is True and big.computed == [23, 24]
    html = page(client, big)
    assert "second-status" not in html and html.count('class="card x-row"') == 24
    assert f'data-asset="{late}"' in html and f'data-asset="{changed}"' in html


def test_when_the_worker_cannot_be_reached_the_page_says_so_and_asks_again_next_time(big, client, monkeypatch):
    from labeling import tasks

    def down(*args, **kwargs):
        raise ConnectionRefusedError("broker down")

    label_the_rest(big, user=big.world.olga)
    monkeypatch.setattr(tasks.second_look, "apply_async", down)
    login(client, big.world.olga)
    assert "could not be reached" in page(client, big) and big.computed == []
    monkeypatch.setattr(tasks.second_look, "apply_async", lambda args, **kw: big.sent.append(args[0]))
    assert "Scoring 24 labels" in page(client, big) and big.sent == [big.world.brand.pk]


def test_another_client_s_member_gets_no_second_look_of_this_taxonomy_and_asks_no_worker(big, client):
    label_the_rest(big)
    login(client, big.world.otto)
    assert client.get(f"/c/acme/t/{big.world.brand.pk}/second-look/").status_code == 404
    assert client.get(f"/c/globex/t/{big.world.brand.pk}/second-look/").status_code == 404
    assert big.sent == [] and big.computed == []


def failing(calls: list[int]):
    def fail(*args, **kwargs):
        calls.append(len(args[1]))
        raise MemoryError("cannot allocate 41 GiB")
    return fail


def test_a_worker_s_failure_is_shown_with_its_error_and_not_asked_again_until_the_retry_time(big, client, monkeypatch):
    import ml.noise
    from labeling import tasks
    from labeling.services import second_look

    tax = big.world.brand
    label_the_rest(big, user=big.world.olga)
    login(client, big.world.olga)
    assert "Scoring 24 labels" in page(client, big) and big.sent == [tax.pk]
    real, calls = ml.noise.suspicion_components, []
    monkeypatch.setattr(ml.noise, "suspicion_components", failing(calls))
    with pytest.raises(MemoryError):
        tasks.second_look(tax.pk)  # the worker's run fails (Celery logs it)

    html = page(client, big)
    assert "Scoring 24 labels failed" in html and "MemoryError: cannot allocate 41 GiB" in html
    assert "second-pending" not in html and "Nothing suspicious" not in html
    page(client, big)
    assert big.sent == [tax.pk] and calls == [24]  # neither load asked the worker again

    monkeypatch.setattr(second_look, "FAILED_RETRY_SECONDS", 0)  # the retry time has come
    monkeypatch.setattr(ml.noise, "suspicion_components", real)
    assert "Scoring 24 labels" in page(client, big) and big.sent == [tax.pk, tax.pk]
    assert tasks.second_look(tax.pk) is True
    html = page(client, big)
    assert "failed" not in html and html.count('class="card x-row"') == 24


def test_a_failure_in_a_page_load_shows_the_page_with_the_error_and_is_not_repeated_on_reload(big, client, monkeypatch, settings):
    import ml.noise

    settings.TAGLOOP_SECOND_LOOK_INLINE = 1000  # small enough to score in the request
    label_the_rest(big, user=big.world.olga)
    calls: list[int] = []
    monkeypatch.setattr(ml.noise, "suspicion_components", failing(calls))
    login(client, big.world.olga)
    html = page(client, big)  # a 200 with the error, not a server error
    assert "Scoring 24 labels failed" in html and "MemoryError" in html and 'class="card x-row"' not in html
    assert "MemoryError" in page(client, big) and calls == [24] and big.sent == []


def test_a_multi_label_taxonomy_gets_no_scores_and_a_page_that_says_why(big, client):
    from labeling.models import Tag, Taxonomy
    from labeling.services import labels, second_look

    style = Taxonomy.objects.create(client=big.world.acme, name="style", kind=Taxonomy.Kind.MULTI)
    red, text = (Tag.objects.create(taxonomy=style, name=n).pk for n in ("red", "has text"))
    for a in list(big.assets.values())[:8]:  # enough labels that a single-label taxonomy would be scored
        labels.save_label(style, a, [red, text] if a.pk % 2 else [red], user=big.world.olga)
    login(client, big.world.olga)
    r = client.get(f"/c/acme/t/{style.pk}/second-look/")
    body = r.content.decode()
    assert r.status_code == 200 and "For single-label taxonomies" in body and "Nothing suspicious" not in body
    assert 'data-asset="' not in body  # no row offers to "fix" a label down to one tag
    assert big.sent == [] and big.computed == [] and not second_look.refresh(style)
