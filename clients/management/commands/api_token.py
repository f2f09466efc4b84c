"""Issue, list and revoke API tokens from the shell.

    manage.py api_token create --user alice [--name "laptop scripts"]
    manage.py api_token create --site st-marys [--name "agent on st-marys-fl01"]
    manage.py api_token list
    manage.py api_token revoke fh12ab34      # by prefix

The token text is printed once, on creation; only its hash is stored.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from clients.models import ApiToken, Site


class Command(BaseCommand):
    help = "create | list | revoke API tokens (personal or site agent)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="issue a token and print it once")
        owner = create.add_mutually_exclusive_group(required=True)
        owner.add_argument("--user", help="username: a personal token acting as this user")
        owner.add_argument("--site", help="site slug: a site-agent token")
        create.add_argument("--name", default="", help="what the token is for")
        sub.add_parser("list", help="list tokens (prefixes only)")
        revoke = sub.add_parser("revoke", help="revoke a token by its prefix")
        revoke.add_argument("prefix")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _create(self, user=None, site=None, name="", **options):
        if user:
            try:
                owner = {"user": get_user_model().objects.get(username=user)}
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user {user!r}") from None
        else:
            try:
                owner = {"site": Site.objects.get(slug=site)}
            except Site.DoesNotExist:
                raise CommandError(f"no site {site!r}") from None
        token, raw = ApiToken.issue(name=name, **owner)
        self.stderr.write(
            f"Token {token.prefix} ({token.get_kind_display()}) issued; it will not be shown again:"
        )
        self.stdout.write(raw)

    def _list(self, **options):
        for t in ApiToken.objects.select_related("user", "site"):
            owner = t.user.get_username() if t.user else t.site.slug
            state = f"revoked {t.revoked_at:%Y-%m-%d}" if t.revoked_at else "active"
            used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
            self.stdout.write(
                f"{t.prefix}  {t.kind:<8}  {owner:<30}  {state:<18}  last used {used}  {t.name}"
            )

    def _revoke(self, prefix, **options):
        token = ApiToken.objects.filter(prefix=prefix).first()
        if token is None:
            raise CommandError(f"no token with prefix {prefix!r}")
        token.revoke()
        self.stdout.write(f"Token {prefix} revoked.")
