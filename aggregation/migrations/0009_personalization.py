# Personalisation and platform early stopping (docs/quality.md): the experiment's
# options, why it finished early, and each site's alone / global / personalised figures.

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("aggregation", "0008_validation")]

    operations = [
        migrations.AddField(
            model_name='experiment',
            name='early_stopping',
            field=models.PositiveIntegerField(blank=True, help_text='Stop after this many rounds without a better validation loss (empty: off).', null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(1000)]),
        ),
        migrations.AddField(
            model_name='experiment',
            name='finish_code',
            field=models.CharField(blank=True, max_length=32),
        ),
        migrations.AddField(
            model_name='experiment',
            name='personalize',
            field=models.CharField(choices=[('off', 'Off'), ('fedper', 'FedPer (a site-kept output layer)'), ('finetune', 'Fine-tuning'), ('ditto', 'Ditto (fine-tuning pulled toward the global model)')], default='off', max_length=10),
        ),
        migrations.AddField(
            model_name='experiment',
            name='stopped_after_round',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name='SiteComparison',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('status', models.CharField(choices=[('pending', 'Pending'), ('running', 'Running'), ('done', 'Done'), ('failed', 'Failed')], default='pending', max_length=10)),
                ('source', models.CharField(choices=[('hosted', 'Hosted worker'), ('agent', 'Site agent')], max_length=10)),
                ('mode', models.CharField(blank=True, max_length=10)),
                ('alone', models.JSONField(blank=True, null=True)),
                ('global_metrics', models.JSONField(blank=True, null=True)),
                ('personalized', models.JSONField(blank=True, null=True)),
                ('personal_file', models.CharField(blank=True, max_length=255)),
                ('personal_sha256', models.CharField(blank=True, max_length=64)),
                ('attempts', models.PositiveIntegerField(default=0)),
                ('error_code', models.CharField(blank=True, max_length=32)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('participant', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='comparison', to='aggregation.participant')),
                ('version', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='aggregation.modelversion')),
            ],
        ),
    ]
