from .experiment import Experiment, Participant
from .model_version import ModelVersion, SiteEvaluation
from .round import ClientUpdate, Round

__all__ = ["ClientUpdate", "Experiment", "ModelVersion", "Participant", "Round", "SiteEvaluation"]
