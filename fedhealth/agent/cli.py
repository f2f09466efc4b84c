"""Command line of the site agent (``python -m fedhealth.agent``, ``manage.py site_agent``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema, SchemaError
from fedhealth.ml.validation import Policy

from .client import ApiClient
from .data import LocalData, LocalDataError
from .ledger import AgentLedger
from .loop import SiteAgent
from .policy import LocalPolicy, PolicyError

TOKEN_ENV = "FEDHEALTH_AGENT_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's options (shared with the manage.py wrapper)."""
    parser.add_argument(
        "--server", required=True, help="FedHealth base URL, e.g. https://fedhealth.example.org"
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"site token (fhs_...); better passed in ${TOKEN_ENV}, out of the process list",
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="the site's local training CSV (never uploaded)"
    )
    parser.add_argument(
        "--schema", type=Path, default=None, help="feature schema JSON file (default: vitals)"
    )
    parser.add_argument(
        "--policy",
        choices=[p.value for p in Policy],
        default=Policy.REJECT.value,
        help="bad rows: reject the file, or drop them",
    )
    parser.add_argument(
        "--name", default=None, help="dataset name shown on the server (default: file name)"
    )
    parser.add_argument(
        "--once", action="store_true", help="poll once, do the work assigned, and exit"
    )
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    parser.add_argument(
        "--retries", type=int, default=8, help="retries per request on network errors/5xx/429"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the agent's own state folder, where its privacy ledger and its secure-aggregation "
        "round secrets live "
        "(default: a .fedhealth-agent folder beside the CSV)",
    )
    parser.add_argument(
        "--privacy-budget",
        type=float,
        default=None,
        help="lifetime epsilon this site allows on these rows; a round past it is refused "
        "whatever the server asks (default: no limit, every spend still recorded)",
    )
    parser.add_argument(
        "--consent-policy",
        type=Path,
        default=None,
        metavar="PATH",
        help="the site's own policy over experiments (JSON or TOML), e.g. "
        '{"require_secure_aggregation": true, "max_rounds": 50, "min_sites": 3}; an experiment '
        "that breaks it is refused before any claim, whatever the server says",
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    """Validate the CSV, then register and poll until stopped (SIGTERM/SIGINT)."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        # Opacus calls logging.basicConfig when imported, which would make ours a no-op.
        force=True,
    )
    log = logging.getLogger("fedhealth.agent")
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        log.error("no token: pass --token or set %s", TOKEN_ENV)
        return 2
    try:
        schema = (
            Schema.from_dict(json.loads(args.schema.read_text())) if args.schema else DEFAULT_SCHEMA
        )
    except (OSError, ValueError, SchemaError) as exc:
        log.error("cannot read the schema %s: %s", args.schema, exc)
        return 2
    try:
        data = LocalData.from_source(args.data, schema, Policy(args.policy))
    except (LocalDataError, OSError) as exc:
        log.error("%s does not validate:\n%s", args.data, exc)
        return 2
    log.info(
        "validated %s: %d rows (%d dropped), %d features",
        args.data,
        len(data.y),
        data.report.rows_dropped,
        len(schema.features),
    )
    if args.privacy_budget is not None and not args.privacy_budget >= 0:
        log.error("--privacy-budget must be >= 0, got %s", args.privacy_budget)
        return 2
    try:
        policy = LocalPolicy.load(args.consent_policy) if args.consent_policy else None
    except PolicyError as exc:
        log.error("cannot use the consent policy: %s", exc)
        return 2
    if policy is not None:
        log.info("consent policy %s: %s", args.consent_policy, policy)
    state_dir = args.state_dir or args.data.parent / ".fedhealth-agent"
    ledger = AgentLedger(state_dir, budget=args.privacy_budget)
    client = ApiClient(args.server, token, timeout=args.timeout, retries=args.retries)
    agent = SiteAgent(
        client,
        data,
        name=args.name or args.data.name,
        poll_interval=args.poll_interval,
        ledger=ledger,
        policy=policy,
        state_dir=state_dir,
    )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    code = agent.run(once=args.once, stop=stop)
    log.info("stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedhealth-agent", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
