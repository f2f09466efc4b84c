import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("aggregation", "0006_consent"),
    ]

    operations = [
        migrations.AddField(
            model_name="privacyledgerentry",
            name="consistency",
            field=models.CharField(
                choices=[
                    ("own", "Computed by the site's hosted worker"),
                    ("consistent", "Reported by the agent; follows from the experiment's settings"),
                    (
                        "mismatch",
                        "Reported by the agent; does not follow from the experiment's settings",
                    ),
                ],
                default="own",
                max_length=12,
            ),
        ),
        migrations.AddField(
            model_name="privacyledgerentry",
            name="consistency_detail",
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.AddField(
            model_name="privacyledgerentry",
            name="update",
            field=models.OneToOneField(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="reported_spend",
                to="aggregation.clientupdate",
            ),
        ),
    ]
