"""Tag names unique among siblings (whatever their case) instead of across the taxonomy. Every
existing taxonomy already satisfies the stricter old rule, so no row needs changing. Reversing it
fails once two tags share a name under different parents: rename one first."""
import django.db.models.functions.text
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('labeling', '0013_audit'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='tag',
            name='tag_name_per_taxonomy_ci',
        ),
        migrations.AddConstraint(
            model_name='tag',
            constraint=models.UniqueConstraint(django.db.models.functions.text.Lower('name'), models.F('taxonomy'), condition=models.Q(('parent__isnull', True)), name='top_tag_name_per_taxonomy_ci', violation_error_message='this taxonomy already has a top-level tag with this name'),
        ),
        migrations.AddConstraint(
            model_name='tag',
            constraint=models.UniqueConstraint(django.db.models.functions.text.Lower('name'), models.F('parent'), condition=models.Q(('parent__isnull', False)), name='tag_name_per_parent_ci', violation_error_message="this tag's parent already has a child with this name"),
        ),
    ]
