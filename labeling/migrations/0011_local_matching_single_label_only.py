"""Local matching is for single-label taxonomies only (models.local_matching_problem). A
multi-label taxonomy that had it switched on never used it (its runs leave matching out), but
would now fail validation on every edit: switch it off."""

from django.db import migrations


def switch_off_for_multi_label(apps, schema_editor):
    Taxonomy = apps.get_model("labeling", "Taxonomy")
    Taxonomy.objects.filter(kind="multi", local_matching=True).update(local_matching=False)


class Migration(migrations.Migration):

    dependencies = [
        ("labeling", "0010_taxonomy_name_case_insensitive"),
    ]

    operations = [
        migrations.RunPython(switch_off_for_multi_label, migrations.RunPython.noop),
    ]
