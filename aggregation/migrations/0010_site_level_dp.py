# Site-level differential privacy (DP-FedAvg): a third dp_mode. Its settings reuse
# dp_epsilon, dp_delta and dp_clip_norm; each round's figures live in Round.metrics.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("aggregation", "0009_personalization")]

    operations = [
        migrations.AlterField(
            model_name="experiment",
            name="dp_mode",
            field=models.CharField(
                choices=[
                    ("off", "Off"),
                    ("record", "Record-level (DP-SGD at each site)"),
                    ("site", "Site-level (DP-FedAvg: each site's whole contribution)"),
                ],
                default="off",
                max_length=10,
            ),
        ),
    ]
