# Reserved in the chain so that parallel work can add its operations without renumbering.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("aggregation", "0011_secagg_pseudonyms")]

    operations: list = []
