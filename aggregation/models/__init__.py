from .comparison import SiteComparison
from .experiment import Experiment, Participant
from .model_version import EvaluationAttempt, ModelVersion, SiteEvaluation, WorkerHeartbeat
from .privacy import PrivacyBudget, PrivacyLedgerEntry
from .round import ClientUpdate, Round
from .secure import SecureRound, SecureSite

__all__ = [
    "ClientUpdate",
    "EvaluationAttempt",
    "Experiment",
    "ModelVersion",
    "Participant",
    "PrivacyBudget",
    "PrivacyLedgerEntry",
    "Round",
    "SecureRound",
    "SecureSite",
    "SiteComparison",
    "SiteEvaluation",
    "WorkerHeartbeat",
]
