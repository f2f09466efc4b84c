"""Browser pages."""

from django.contrib.auth import views as auth_views
from django.urls import path

from aggregation import views as experiments
from aggregation.views import consent as consent_views
from audit import views as audit
from clients import views as sites
from clients.views import deletion as dataset_deletion
from clients.views import invitation as invitations
from clients.views import people as people_views
from clients.views import sites as site_admin

urlpatterns = [
    # Signing in; settings.LOGIN_URL / LOGIN_REDIRECT_URL name "login" and "home".
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("", sites.home, name="home"),
    # Browsers ask for /favicon.ico on every page, the admin's and the API docs' too.
    path("favicon.ico", sites.favicon, name="favicon"),
    # A site's own pages.
    path("site/", sites.site_home, name="site_home"),
    path("datasets/upload/", sites.dataset_upload, name="dataset_upload"),
    path("datasets/template.csv", sites.dataset_template, name="dataset_template"),
    path("datasets/<int:pk>/", sites.dataset_detail, name="dataset_detail"),
    path("datasets/<int:pk>/download/", sites.dataset_download, name="dataset_download"),
    path("datasets/<int:pk>/privacy-budget/", sites.dataset_privacy_budget, name="dataset_privacy_budget"),
    # A site admin's consent decisions and dataset withdrawal (aggregation/views/consent.py).
    path("site/experiments/<int:pk>/accept/", consent_views.consent_accept, name="consent_accept"),
    path("site/experiments/<int:pk>/decline/", consent_views.consent_decline, name="consent_decline"),
    path("site/experiments/<int:pk>/withdraw/", consent_views.consent_withdraw, name="consent_withdraw"),
    path("datasets/<int:pk>/withdraw/", consent_views.dataset_withdraw, name="dataset_withdraw"),
    path("datasets/<int:pk>/delete/", dataset_deletion.dataset_delete, name="dataset_delete"),
    # A site admin's people and site tokens (clients/views/people.py).
    path("site/people/", people_views.site_people, name="site_people"),
    path("site/people/invite/", people_views.site_invite, name="site_invite"),
    path("site/people/<int:pk>/role/", people_views.member_role, name="member_role"),
    path("site/people/<int:pk>/remove/", people_views.member_remove, name="member_remove"),
    path("site/invitations/<int:pk>/revoke/", people_views.invitation_revoke, name="invitation_revoke"),
    path("site/tokens/", people_views.site_token_create, name="site_token_create"),
    path("site/tokens/<int:pk>/revoke/", people_views.site_token_revoke, name="site_token_revoke"),
    # An invitation link (anyone holding it; clients/views/invitation.py).
    path("invite/<str:key>/", invitations.invitation_accept, name="invitation_accept"),
    # The coordinator's overview.
    path("coordinator/", sites.dashboard, name="dashboard"),
    path("coordinator/sites/new/", site_admin.site_create, name="site_create"),
    path("coordinator/sites/<int:pk>/", site_admin.site_detail, name="site_detail"),
    path("coordinator/sites/<int:pk>/invite/", site_admin.site_invite_admin, name="site_invite_admin"),
    # Experiments.
    path("experiments/", experiments.experiment_list, name="experiment_list"),
    path("experiments/new/", experiments.experiment_create, name="experiment_create"),
    path("experiments/<int:pk>/", experiments.experiment_detail, name="experiment_detail"),
    path("experiments/<int:pk>/edit/", experiments.experiment_edit, name="experiment_edit"),
    path("experiments/<int:pk>/live.json", experiments.experiment_live, name="experiment_live"),
    *(
        path(f"experiments/<int:pk>/{action}/", experiments.experiment_action, {"action": action},
             name=f"experiment_{action}")
        for action in ("start", "pause", "resume", "cancel")
    ),
    path("experiments/<int:pk>/export.json", experiments.experiment_export, {"fmt": "json"},
         name="experiment_export_json"),
    path("experiments/<int:pk>/metrics.csv", experiments.experiment_export, {"fmt": "metrics.csv"},
         name="experiment_export_metrics"),
    path("experiments/<int:pk>/log.csv", experiments.experiment_export, {"fmt": "log.csv"},
         name="experiment_export_log"),
    # Models and predictions.
    path("experiments/<int:pk>/models/", experiments.model_list, name="model_list"),
    path("models/<int:pk>/download/", experiments.model_download, name="model_download"),
    path("models/<int:pk>/card/", experiments.model_card, name="model_card"),
    path("predict/", experiments.predict, name="predict"),
    # The audit trail (coordinators: everything; site admins: their site's).
    path("audit/", audit.audit_list, name="audit_list"),
    path("audit/export.csv", audit.audit_export, {"fmt": "csv"}, name="audit_export_csv"),
    path("audit/export.json", audit.audit_export, {"fmt": "json"}, name="audit_export_json"),
]
