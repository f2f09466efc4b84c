"""``{% invitations_card %}``: a site admin's invitations, with the full terms, on the
site home (kept here so the site's page needs one line, not the consent logic)."""

from __future__ import annotations

from django import template

from clients.permissions import is_site_admin

from ..models import Experiment
from ..services import consent

register = template.Library()


@register.inclusion_tag("aggregation/_invitations.html", takes_context=True)
def invitations_card(context):
    user = context["request"].user
    admin = is_site_admin(user)
    rows = []
    for p in consent.invitations(user).exclude(experiment__status__in=Experiment.FINISHED):
        body = consent.terms(p.experiment)
        state = consent.state(p, consent.hash_terms(body))
        rows.append(
            {
                "participant": p,
                "experiment": p.experiment,
                "terms": body,
                "state": state,
                "state_text": consent.STATE_TEXT[state],
                "datasets": consent.eligible_datasets(p.experiment, p.site) if admin else [],
                "can_accept": admin and state in ("invited", "declined", consent.TERMS_CHANGED),
                "can_decline": admin
                and state in ("invited", consent.TERMS_CHANGED)
                or (
                    admin and state == "accepted" and p.experiment.status == Experiment.Status.DRAFT
                ),
                "can_withdraw": admin
                and state in ("accepted", consent.TERMS_CHANGED)
                and p.experiment.status != Experiment.Status.DRAFT,
            }
        )
    return {"rows": rows, "site_admin": admin, "csrf_token": context.get("csrf_token")}
