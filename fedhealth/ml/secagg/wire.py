"""Messages and session state as JSON: for the API, the database and site-private storage.

``encode(message) -> dict`` and ``decode(dict) -> message`` cover every protocol message
(``"kind"`` names it; bytes travel as standard base64). ``decode`` is strict: an unknown
kind, a missing or extra field, a value of the wrong type or invalid base64 is refused with
a ``ProtocolViolation`` naming the field and value, before any protocol check runs.

Session state (``SiteSession.export_state`` / ``restore``, the same for
``AggregationSession``) uses the same helpers. A site's state holds its private keys and
seed: store it where only that site can read it (an agent's state folder, a hosted site's
private storage), never where the server's pages or API read.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .errors import ProtocolViolation
from .keys import RoundContext
from .masking import QuantSpec
from .messages import (
    Advertise,
    ConsistencySignature,
    MaskedInput,
    Roster,
    RosterEntry,
    SharePackage,
    UnmaskReply,
    UnmaskRequest,
)

Message = (
    Advertise
    | Roster
    | SharePackage
    | MaskedInput
    | UnmaskRequest
    | ConsistencySignature
    | UnmaskReply
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(field, value, "base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _bad(field, value, "base64 text") from None


def _bad(field: str, value: Any, expected: str) -> ProtocolViolation:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return ProtocolViolation(
        f"field {field!r}: expected {expected}, got {shown}", code="secagg_malformed"
    )


def _fields(data: Any, field: str, names: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _bad(field, data, "an object")
    if set(data) != names:
        missing, extra = sorted(names - set(data)), sorted(set(data) - names)
        raise ProtocolViolation(
            f"field {field!r}: missing {missing}, unexpected {extra}", code="secagg_malformed"
        )
    return data


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(field, value, "a non-empty string")
    return value


def _int(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(field, value, "an integer")
    return value


def bytes_map(value: Any, field: str) -> dict[str, bytes]:
    if not isinstance(value, dict):
        raise _bad(field, value, "an object of site -> base64")
    return {_str(k, f"{field}.key"): unb64(v, f"{field}[{k!r}]") for k, v in value.items()}


def encode_ctx(ctx: RoundContext) -> dict[str, Any]:
    return {"session": ctx.session, "round": ctx.round}


def decode_ctx(data: Any, field: str = "ctx") -> RoundContext:
    d = _fields(data, field, {"session", "round"})
    try:
        return RoundContext(
            _str(d["session"], f"{field}.session"), _int(d["round"], f"{field}.round")
        )
    except ValueError as exc:
        raise ProtocolViolation(f"field {field!r}: {exc}", code="secagg_malformed") from None


def encode(msg: Message) -> dict[str, Any]:
    """The JSON form of a protocol message."""
    ctx = encode_ctx(msg.ctx)
    if isinstance(msg, Advertise):
        return {
            "kind": "advertise",
            "ctx": ctx,
            "site": msg.site,
            "enc_key": b64(msg.enc_key),
            "mask_key": b64(msg.mask_key),
            "seed_commit": b64(msg.seed_commit),
            "sign_key": b64(msg.sign_key),
        }
    if isinstance(msg, Roster):
        return {
            "kind": "roster",
            "ctx": ctx,
            "threshold": msg.threshold,
            "degree": msg.degree,
            "spec": {
                "clip": msg.spec.clip,
                "max_weight": msg.spec.max_weight,
                "n_sites": msg.spec.n_sites,
            },
            "length": msg.length,
            "entries": [
                {
                    "site": e.site,
                    "index": e.index,
                    "enc_key": b64(e.enc_key),
                    "mask_key": b64(e.mask_key),
                    "seed_commit": b64(e.seed_commit),
                    "sign_key": b64(e.sign_key),
                }
                for e in msg.entries
            ],
        }
    if isinstance(msg, SharePackage):
        return {
            "kind": "shares",
            "ctx": ctx,
            "site": msg.site,
            "ciphertexts": {k: b64(v) for k, v in msg.ciphertexts.items()},
        }
    if isinstance(msg, MaskedInput):
        return {"kind": "masked", "ctx": ctx, "site": msg.site, "vector": b64(msg.vector)}
    if isinstance(msg, UnmaskRequest):
        return {
            "kind": "unmask_request",
            "ctx": ctx,
            "survivors": list(msg.survivors),
            "signatures": {k: b64(v) for k, v in sorted(msg.signatures.items())},
        }
    if isinstance(msg, ConsistencySignature):
        return {"kind": "signature", "ctx": ctx, "site": msg.site, "signature": b64(msg.signature)}
    return {
        "kind": "unmask_reply",
        "ctx": ctx,
        "site": msg.site,
        "seed_shares": {k: b64(v) for k, v in msg.seed_shares.items()},
        "key_shares": {k: b64(v) for k, v in msg.key_shares.items()},
    }


_KINDS = {
    "advertise": {"ctx", "site", "enc_key", "mask_key", "seed_commit", "sign_key"},
    "roster": {"ctx", "threshold", "degree", "spec", "length", "entries"},
    "shares": {"ctx", "site", "ciphertexts"},
    "masked": {"ctx", "site", "vector"},
    "unmask_request": {"ctx", "survivors", "signatures"},
    "signature": {"ctx", "site", "signature"},
    "unmask_reply": {"ctx", "site", "seed_shares", "key_shares"},
}


def decode(data: Any) -> Message:
    """A protocol message from its JSON form; ProtocolViolation naming the bad field."""
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise _bad(
            "kind", data.get("kind") if isinstance(data, dict) else data, f"one of {sorted(_KINDS)}"
        )
    kind = data["kind"]
    d = _fields({k: v for k, v in data.items() if k != "kind"}, kind, _KINDS[kind])
    ctx = decode_ctx(d["ctx"])
    if kind == "advertise":
        return Advertise(
            ctx,
            _str(d["site"], "site"),
            unb64(d["enc_key"], "enc_key"),
            unb64(d["mask_key"], "mask_key"),
            unb64(d["seed_commit"], "seed_commit"),
            unb64(d["sign_key"], "sign_key"),
        )
    if kind == "roster":
        spec = _fields(d["spec"], "spec", {"clip", "max_weight", "n_sites"})
        if not isinstance(spec["clip"], int | float) or isinstance(spec["clip"], bool):
            raise _bad("spec.clip", spec["clip"], "a number")
        if not isinstance(d["entries"], list):
            raise _bad("entries", d["entries"], "a list")
        entries = []
        for i, e in enumerate(d["entries"]):
            e = _fields(
                e,
                f"entries[{i}]",
                {"site", "index", "enc_key", "mask_key", "seed_commit", "sign_key"},
            )
            entries.append(
                RosterEntry(
                    _str(e["site"], f"entries[{i}].site"),
                    _int(e["index"], f"entries[{i}].index"),
                    unb64(e["enc_key"], f"entries[{i}].enc_key"),
                    unb64(e["mask_key"], f"entries[{i}].mask_key"),
                    unb64(e["seed_commit"], f"entries[{i}].seed_commit"),
                    unb64(e["sign_key"], f"entries[{i}].sign_key"),
                )
            )
        degree = None if d["degree"] is None else _int(d["degree"], "degree")
        try:
            quant = QuantSpec(
                float(spec["clip"]),
                _int(spec["max_weight"], "spec.max_weight"),
                _int(spec["n_sites"], "spec.n_sites"),
            )
        except ValueError as exc:
            raise ProtocolViolation(f"field 'spec': {exc}", code="secagg_malformed") from None
        return Roster(
            ctx,
            _int(d["threshold"], "threshold"),
            degree,
            quant,
            _int(d["length"], "length"),
            tuple(entries),
        )
    if kind == "shares":
        return SharePackage(
            ctx, _str(d["site"], "site"), bytes_map(d["ciphertexts"], "ciphertexts")
        )
    if kind == "masked":
        return MaskedInput(ctx, _str(d["site"], "site"), unb64(d["vector"], "vector"))
    if kind == "unmask_request":
        if not isinstance(d["survivors"], list):
            raise _bad("survivors", d["survivors"], "a list of site ids")
        return UnmaskRequest(
            ctx,
            tuple(_str(s, "survivors[]") for s in d["survivors"]),
            bytes_map(d["signatures"], "signatures"),
        )
    if kind == "signature":
        return ConsistencySignature(
            ctx, _str(d["site"], "site"), unb64(d["signature"], "signature")
        )
    return UnmaskReply(
        ctx,
        _str(d["site"], "site"),
        bytes_map(d["seed_shares"], "seed_shares"),
        bytes_map(d["key_shares"], "key_shares"),
    )
