# Secure aggregation: per-round pseudonymous protocol ids (no site learns which other sites
# take part) and Bonawitz's consistency-check phase.
from django.db import migrations, models


def legacy_ids(apps, schema_editor):
    """Rows from before this migration: their rounds' protocol state names sites by slug,
    so that is their protocol id (new rounds get random ids)."""
    SecureSite = apps.get_model("aggregation", "SecureSite")
    for place in SecureSite.objects.filter(protocol_id="").select_related("site"):
        place.protocol_id = place.site.slug
        place.save(update_fields=["protocol_id"])


class Migration(migrations.Migration):
    dependencies = [("aggregation", "0010_site_level_dp")]

    operations = [
        migrations.AddField(
            model_name="securesite",
            name="protocol_id",
            field=models.CharField(blank=True, default="", max_length=32),
        ),
        migrations.RunPython(legacy_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="secureround",
            name="phase",
            field=models.CharField(
                choices=[
                    ("advertise", "Advertising keys"),
                    ("share", "Sharing keys"),
                    ("masked", "Sending masked updates"),
                    ("consistency", "Signing the survivor list"),
                    ("unmask", "Unmasking the sum"),
                    ("done", "Done"),
                    ("failed", "Failed closed"),
                ],
                default="advertise",
                max_length=12,
            ),
        ),
        migrations.AddConstraint(
            model_name="securesite",
            constraint=models.UniqueConstraint(
                fields=("secure_round", "protocol_id"), name="one_protocol_id_per_secure_round"
            ),
        ),
    ]
