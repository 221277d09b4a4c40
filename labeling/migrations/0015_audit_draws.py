"""The audit's draws (AuditDraw: every asset the queue served in its audit order, answered or not)
and the audit labels' index over every one of them, current or not (a later re-save of an audited
image no longer takes its answer out of the estimate). Audit labels given before this migration
get their draw from the label itself: the images that were served and never answered then are
not known, so their estimate starts without that non-response."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def draws_of_audit_labels(apps, schema_editor):
    Label, AuditDraw = apps.get_model("labeling", "Label"), apps.get_model("labeling", "AuditDraw")
    audit_labels = Label.objects.filter(audit=True, model_version__isnull=False)
    first: dict[tuple, int | None] = {}  # (taxonomy, version, asset) -> the first audit label's user
    for t, mv, a, u in audit_labels.order_by("id").values_list("taxonomy_id", "model_version_id", "asset_id", "user_id"):
        first.setdefault((t, mv, a), u)
    AuditDraw.objects.bulk_create([AuditDraw(taxonomy_id=t, model_version_id=mv, asset_id=a, user_id=u)
                                   for (t, mv, a), u in first.items()], batch_size=1000)
    # created was stamped now: the draw was made when its first label was given, or before
    AuditDraw.objects.update(created=Subquery(
        audit_labels.filter(taxonomy_id=OuterRef("taxonomy_id"), model_version_id=OuterRef("model_version_id"),
                            asset_id=OuterRef("asset_id")).order_by("id").values("created")[:1]))


class Migration(migrations.Migration):

    dependencies = [
        ('labeling', '0014_tag_name_per_parent'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='AuditDraw',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created', models.DateTimeField(auto_now_add=True)),
                ('asset', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='labeling.asset')),
                ('model_version', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='labeling.modelversion')),
                ('taxonomy', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='labeling.taxonomy')),
                ('user', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('taxonomy', 'model_version', 'asset'), name='one_audit_draw')],
            },
        ),
        migrations.RemoveIndex(
            model_name='label',
            name='label_audit',
        ),
        migrations.AddIndex(
            model_name='label',
            index=models.Index(condition=models.Q(('audit', True)), fields=['taxonomy', 'model_version'], name='label_audit'),
        ),
        migrations.RunPython(draws_of_audit_labels, migrations.RunPython.noop),
    ]
