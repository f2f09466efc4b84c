"""Forms of the site pages: the dataset upload."""

from __future__ import annotations

from django import forms

from fedhealth.ml.validation import Policy


class UploadForm(forms.Form):
    # The file comes last: when an oversized upload is cut off, the fields before it
    # have already been read and the form can be shown again filled in.
    name = forms.CharField(
        label="Dataset name",
        max_length=255,
        help_text="Shown to your site and to the coordinator. Do not include patient identifiers.",
        widget=forms.TextInput(attrs={"placeholder": "e.g. Cardiology ward vitals, 2024"}),
    )
    policy = forms.ChoiceField(
        label="If some rows are invalid",
        choices=[
            (Policy.REJECT.value, "Reject the whole file and show me the problems"),
            (Policy.DROP_INVALID_ROWS.value, "Drop the invalid rows and keep the rest"),
        ],
        initial=Policy.REJECT.value,
        widget=forms.RadioSelect,
    )
    file = forms.FileField(
        label="CSV file",
        help_text="UTF-8, comma-separated, with a header row.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
    )
