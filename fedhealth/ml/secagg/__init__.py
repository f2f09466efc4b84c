"""Secure aggregation: the server learns the sum of the sites' weighted updates, not one of them.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth (2017), "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS; with the sparse neighbour
graph of Bell et al. (2020, SecAgg+) as an option (``degree``). Modules:

* ``shamir``   t-of-n sharing over GF(2^521 - 1);
* ``keys``     X25519, HKDF-SHA256 bound to round and sites, ChaCha20-Poly1305 for shares;
* ``masking``  fixed-point quantisation modulo 2^32 (error bound there), ChaCha20 masks;
* ``graph``    who masks with whom;
* ``messages`` what travels, stage by stage;
* ``client``   ``SiteSession``: a site's state machine;
* ``consistency`` Bonawitz's ConsistencyCheck: Ed25519 signatures over the survivor list;
* ``server``   ``AggregationSession``: the relay that unmasks only the sum;
* ``inprocess`` ``secure_round``: all of it in one process (simulate, benchmarks).

Threat model: an honest-but-curious server and up to t - 1 colluding sites learn nothing
about one site's update beyond the sum. Not covered: a malicious site can still poison the
sum (no robust rule can run on a sum), and the signing keys reach the sites through the
server, so a server that invents whole sites at key advertisement is out of scope without a
PKI (docs/secure-aggregation.md).
"""

from .errors import BelowThreshold, ProtocolViolation, SecAggError
from .inprocess import secure_round
from .keys import RoundContext
from .server import AggregationSession, SecureResult, check_threshold, default_threshold

__all__ = [
    "AggregationSession",
    "BelowThreshold",
    "ProtocolViolation",
    "RoundContext",
    "SecAggError",
    "SecureResult",
    "check_threshold",
    "default_threshold",
    "secure_round",
]
