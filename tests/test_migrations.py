"""Data migrations, run forward on rows made with the models as they were before them."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate(target: tuple[str, str]):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])
    return executor.loader.project_state([target]).apps


@pytest.fixture(autouse=True)
def back_to_the_latest():
    """Each test leaves the schema where it found it: the tests after it (live-server ones
    above all) need every migration applied, not the one a test stopped at."""
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_local_matching_is_switched_off_for_multi_label_taxonomies_and_kept_for_single_label_ones():
    apps = migrate(("labeling", "0010_taxonomy_name_case_insensitive"))
    Client, Taxonomy = apps.get_model("labeling", "Client"), apps.get_model("labeling", "Taxonomy")
    client = Client.objects.create(name="Acme", slug="acme")
    multi = Taxonomy.objects.create(client=client, name="colours", kind="multi", local_matching=True)
    single = Taxonomy.objects.create(client=client, name="brands", kind="single", local_matching=True)
    apps = migrate(("labeling", "0011_local_matching_single_label_only"))
    Taxonomy = apps.get_model("labeling", "Taxonomy")
    assert not Taxonomy.objects.get(pk=multi.pk).local_matching
    assert Taxonomy.objects.get(pk=single.pk).local_matching
