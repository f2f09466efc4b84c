"""Control an experiment from the shell: start, pause, resume, cancel, or show status."""

from django.core.management.base import BaseCommand, CommandError

from aggregation import dispatch, services
from aggregation.models import Experiment, Round

ACTIONS = {
    "start": services.start_experiment,
    "pause": services.pause_experiment,
    "resume": services.resume_experiment,
    "cancel": services.cancel_experiment,
}


class Command(BaseCommand):
    help = "start | pause | resume | cancel | status an experiment by id."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=[*ACTIONS, "status"])
        parser.add_argument("experiment_id", type=int)

    def handle(self, *args, action, experiment_id, **options):
        try:
            experiment = Experiment.objects.get(pk=experiment_id)
        except Experiment.DoesNotExist:
            raise CommandError(f"no experiment with id {experiment_id}") from None
        notice = ""
        if action != "status":
            try:
                with dispatch.report() as sent:
                    experiment = ACTIONS[action](experiment_id)
            except services.TransitionError as exc:
                raise CommandError(str(exc)) from None
            notice = sent.notice
        done = experiment.rounds.filter(status=Round.Status.COMPLETED).count()
        self.stdout.write(
            f"{experiment.name}: {experiment.status}, {done}/{experiment.num_rounds} rounds completed"
            + (f" ({experiment.failure_reason})" if experiment.failure_reason else "")
        )
        if notice:  # the change is made; only its work waits for the broker
            self.stdout.write(self.style.WARNING(notice))
