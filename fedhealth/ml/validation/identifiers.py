"""Column names that look like patient identifiers.

A hosted site's upload keeps only the schema's columns (clients/services.py writes the
canonical file), so an extra column never reaches storage whatever its name. These patterns
only decide which dropped columns the validation report *calls out*, so that a data steward
learns that their export carried identifiers and can fix it at the source.

The list is deliberately small and documented; it matches a column name after lowercasing and
turning every run of non-alphanumeric characters into ``_`` (``"Patient ID"`` ->
``patient_id``):

- record numbers: ``mrn``, ``medical_record...``, ``record_number``, ``hospital_number``,
  ``nhs`` (``nhs_number``, ``nhs_no``), ``ssn`` / ``social_security...``, ``chi`` (Scotland),
- patient ids: ``patient_id``, ``patientid``, ``subject_id``, ``person_id``, ``id``,
- names: any ``name`` part (``name``, ``first_name``, ``surname``, ``forename``, ``full_name``),
- birth: ``dob``, ``date_of_birth``, ``birth_date``, ``birthdate``,
- contact: ``email``/``e_mail``, ``phone``/``telephone``/``mobile``/``tel``, ``fax``,
  ``address``/``street``, ``postcode``/``post_code``/``zip``/``zipcode``/``postal_code``,
  ``ip_address``.
"""

from __future__ import annotations

import re

# Whole-name patterns (fullmatch on the normalised name).
IDENTIFIER_PATTERNS: tuple[str, ...] = (
    r"(.+_)?(mrn|ssn|dob|nhs|chi)(_.+)?",
    r"medical_?record.*",
    r"(.+_)?(record|hospital|case)_?(number|no|num|id)",
    r"social_?security.*",
    r"(patient|subject|person|client)_?(id|no|number|num|key)?",
    r"id",
    r"(.+_)?(name|surname|forename|firstname|lastname|fullname)(_.+)?",
    r"(date_?of_?birth|birth_?date|birthdate|birthday)",
    r"(.+_)?(e_?mail|phone|telephone|mobile|tel|fax)(_.+)?",
    r"(.+_)?(address|street|postcode|post_code|postal_code|zip|zipcode|zip_code)(_.+)?",
)
_COMPILED = tuple(re.compile(p) for p in IDENTIFIER_PATTERNS)


def normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def looks_like_identifier(name: str) -> bool:
    """True when the column name matches one of :data:`IDENTIFIER_PATTERNS`."""
    key = normalise(name)
    return bool(key) and any(p.fullmatch(key) for p in _COMPILED)
