# Failures with an end (issue 8, item 5): when the latest aggregation attempt began.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("aggregation", "0002_trust_and_failures"),
    ]

    operations = [
        migrations.AddField(
            model_name="round",
            name="aggregation_started_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
