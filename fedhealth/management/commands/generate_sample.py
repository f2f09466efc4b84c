"""Write one CSV of synthetic vitals per site."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fedhealth.ml.synthetic import generate_sites


class Command(BaseCommand):
    help = "Write synthetic four-vital CSVs, one per site (reproducible by --seed)."
    # Core only: no project checks to run (manage.py runs it without the project's
    # settings: fedhealth/management/core.py).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
        parser.add_argument("--rows", type=int, default=2000, help="rows per site (default 2000)")
        parser.add_argument("--out", required=True, help="output directory (created if missing)")
        parser.add_argument("--non-iid", action="store_true", help="skew label balance and vitals per site")
        parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration for --non-iid")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, sites, rows, out, non_iid, alpha, seed, **options):
        if sites < 1 or rows < 10:
            raise CommandError("--sites must be at least 1 and --rows at least 10")
        if alpha <= 0:
            raise CommandError("--alpha must be positive")
        out_dir = Path(out)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"cannot create {out_dir}: {exc.strerror}") from None
        frames = generate_sites(sites, rows, seed=seed, non_iid=non_iid, alpha=alpha)
        for name, frame in frames.items():
            path = out_dir / f"{name}.csv"
            frame.to_csv(path, index=False)
            balance = frame["healthy"].mean()
            self.stdout.write(f"{path}  {len(frame)} rows, {balance:.0%} healthy")
