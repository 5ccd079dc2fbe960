"""Tagged JSON for what the engine keeps (SPEC 5.1): runs' event and wait dicts, states,
member records, queued starts, event data. Values come back with the Python types
that went in.

Rules:
- JSON's own types pass as they are (str, int, float incl. NaN, bool, None, list,
  dict with text keys).
- Others are a one-key object: ``{"$dt": "2026-12-01T09:00:00+08:00[Asia/Shanghai]"}``
  (ISO 8601; the zone key in brackets when the datetime carries a ``ZoneInfo``, so
  the same zone comes back, not only the same offset), ``{"$date": "2026-12-01"}``,
  ``{"$tuple": [...]}``, ``{"$map": [[key, value], ...]}`` (a dict with keys that are
  not text, e.g. a run's ``occurrences``, or a dict that would read as a tag).
- Anything else (a set, an object) raises ``TypeError``: nothing is stored as text
  that would come back as another type.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

TAGS = frozenset({"$dt", "$date", "$tuple", "$map"})

# One C encoder for every call (``json.dumps`` builds one per call): compact, UTF-8
# text as is, NaN allowed (``loads`` reads it back), no circular check (plain data).
_ENCODE: Any = getattr(json.encoder, "c_make_encoder", None)
if _ENCODE is not None:
    _ENCODE = _ENCODE(None, lambda o: plain(o), json.encoder.encode_basestring, None, ":", ",", False, False, True)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


_SCALARS = frozenset({str, int, float, bool, type(None)})
_MEMO: dict[int, tuple[datetime, float, str]] = {}  # id -> (the datetime, timestamp, text)
_MEMO_SIZE = 512


def dt_cols(value: datetime) -> tuple[float, str]:
    """(POSIX timestamp, ``dt_text``) of ``value``. The runs, messages and timers of one
    decision share a few datetime objects (``now``, a due time): each is formatted once.
    Keyed by identity, holding the object, so an id is never reused meanwhile."""
    hit = _MEMO.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1], hit[2]
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.clear()
    ts, text = value.timestamp(), _format(value)
    _MEMO[id(value)] = (value, ts, text)
    return ts, text


def dt_text(value: datetime) -> str:
    """A datetime as text that ``dt_parse`` turns back into an equal datetime with the
    same tzinfo (a ZoneInfo by its key, else the fixed offset), wall time and fold."""
    hit = _MEMO.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[2]
    return dt_cols(value)[1]


def _format(value: datetime) -> str:
    tz = value.tzinfo
    if isinstance(tz, ZoneInfo) and tz.key:
        return f"{value.isoformat()}[{tz.key}]"
    return value.isoformat()


@lru_cache(maxsize=8192)
def dt_parse(text: str) -> datetime:
    # Cached: the messages of one firing share their times. datetimes are immutable.
    if not text.endswith("]"):
        return datetime.fromisoformat(text)
    iso, _, key = text[:-1].partition("[")
    fixed = datetime.fromisoformat(iso)
    zone = ZoneInfo(key)
    # The same wall time in the zone, with the fold that gives the written offset: a
    # time in a DST gap or overlap comes back as it was, not normalised.
    local = fixed.replace(tzinfo=zone)
    if local.utcoffset() != fixed.utcoffset():
        local = local.replace(fold=1)
        if local.utcoffset() != fixed.utcoffset():  # the zone's rules changed since
            return fixed.astimezone(zone)
    return local


def opt_dt_text(value: datetime | None) -> str | None:
    return dt_text(value) if value is not None else None


def opt_dt_parse(text: str | None) -> datetime | None:
    return dt_parse(text) if text is not None else None


def plain(value: Any) -> Any:
    """``value`` as JSON-able data with tags (see Rules). A list or dict that is JSON
    already is returned as it is, not copied (most records are flat)."""
    cls = value.__class__
    if cls in _SCALARS:
        return value
    if cls is dict:
        out = None
        for key, item in value.items():
            if key.__class__ is not str:
                return {"$map": [[plain(k), plain(v)] for k, v in value.items()]}
            if item.__class__ in _SCALARS:
                continue
            done = plain(item)
            if done is not item:
                if out is None:
                    out = dict(value)
                out[key] = done
        if len(value) == 1 and next(iter(value)) in TAGS:
            return {"$map": [[k, plain(v)] for k, v in value.items()]}
        return value if out is None else out
    if cls is list:
        copied = None
        for i, item in enumerate(value):
            if item.__class__ in _SCALARS:
                continue
            done = plain(item)
            if done is not item:
                if copied is None:
                    copied = list(value)
                copied[i] = done
        return value if copied is None else copied
    if cls is datetime:
        return {"$dt": dt_text(value)}
    if cls is date:
        return {"$date": value.isoformat()}
    if cls is tuple:
        return {"$tuple": [plain(v) for v in value]}
    return _plain_subclass(value)


def _plain_subclass(value: Any) -> Any:
    # Subclasses (a str enum, an OrderedDict): stored as their JSON base type.
    if isinstance(value, bool):
        return bool(value)
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, datetime):
        return {"$dt": dt_text(value)}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, dict):
        return plain(dict(value))
    if isinstance(value, (list, tuple)):
        return plain(list(value) if isinstance(value, list) else tuple(value))
    raise TypeError(f"cannot store a value of type {type(value).__name__}: {value!r:.80}")


def dumps(value: Any) -> str:
    return encode_plain(plain(value))


def encode_plain(data: Any) -> str:
    """JSON text of what ``plain`` returned (or a list of such values)."""
    if _ENCODE is not None and data.__class__ in (dict, list):
        return "".join(_ENCODE(data, 0))
    return _ENCODER.encode(data)


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        for key, value in obj.items():
            if key == "$dt":
                return dt_parse(value)
            if key == "$date":
                return date.fromisoformat(value)
            if key == "$tuple":
                return tuple(value)
            if key == "$map":
                # keys were decoded already (a tuple key by its own tag)
                return dict(value)
    return obj


_DECODER = json.JSONDecoder(object_hook=_hook)
loads = _DECODER.decode
