"""The schedule: the rendezvous policy, a declarative document applied at run time.

A schedule arrives as JSON (or YAML) text on the ``control`` topic and replaces the live one
with no restart. It says which models may answer a request and in which preference, how
long to wait for each, the hard deadline, what to answer when nothing usable arrived, which
models never answer (canary, shadow, post-production) and an optional traffic split for
soft roll-outs.

Timing. The clock origin is the request's own ``timestamp`` (so time spent upstream counts).
``stages[k].wait_ms`` is an *absolute* offset from that origin (strictly increasing): stage 0
is acceptable from 0 ms, stage ``k`` from ``stages[k-1].wait_ms``. At any time the answer is
the earliest acceptable stage holding a usable (error-free) score. The last stage's
``wait_ms`` therefore only bounds its own preference window and must stay below
``deadline_ms``; at the deadline any stage model's usable score is taken, else the default.

>>> s = parse_schedule('''
... id: fraud-v7
... stages: [{model: A, wait_ms: 20}, {model: B, wait_ms: 35}]
... deadline_ms: 50
... ignore: [canary]
... ''')
>>> s.id, [st.model for st in s.stages], s.deadline_ms, s.models()
('fraud-v7', ['A', 'B'], 50, ('A', 'B', 'canary'))
>>> parse_schedule({"id": "x", "stages": [{"model": "A", "wait_ms": "soon"}]})
Traceback (most recent call last):
...
udfs.schedule.ScheduleError: invalid schedule (2 problems): stages[0].wait_ms: must be a \
non-negative integer, got 'soon'; deadline_ms: required, a positive integer (ms)
>>> bucket("user-42")  # stable across processes and machines (blake2b, not hash())
98
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, TypeGuard

__all__ = [
    "DEFAULT_SCHEDULE",
    "Default",
    "Schedule",
    "ScheduleError",
    "Split",
    "Stage",
    "Variant",
    "bucket",
    "parse_schedule",
]


class ScheduleError(ValueError):
    """A schedule document is invalid; ``problems`` lists every ``path: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = "1 problem" if n == 1 else f"{n} problems"
        super().__init__(f"invalid schedule ({head}): " + "; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Stage:
    """One preference step: ``model`` is preferred until ``wait_ms`` after the request."""

    model: str
    wait_ms: int


@dataclass(frozen=True, slots=True)
class Default:
    """What to answer when no usable score arrived: a ``rdv.Features`` record."""

    outputs: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of a traffic split, with its own stages."""

    name: str
    weight: int
    stages: tuple[Stage, ...]


@dataclass(frozen=True, slots=True)
class Split:
    """Route requests to variants by a stable hash of a request field (one user, one arm).

    ``field`` is a dotted path into the Request record (``entity_key``,
    ``inputs.labels.user_id``); ``salt`` reshuffles who lands where between roll-outs.
    Requests lacking the field go to the first variant (put the incumbent first).
    """

    field: str
    variants: tuple[Variant, ...]
    salt: str = ""
    _path: tuple[str, ...] = dc_field(init=False, repr=False, compare=False)
    _bounds: tuple[int, ...] = dc_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_path", tuple(self.field.split(".")))
        acc, bounds = 0, []
        for v in self.variants:
            acc += v.weight
            bounds.append(acc)
        object.__setattr__(self, "_bounds", tuple(bounds))

    def variant_for(self, request: dict[str, Any]) -> Variant:
        """The variant a request falls in (first variant when the field is missing)."""
        cur: Any = request
        for part in self._path:
            cur = cur.get(part) if isinstance(cur, dict) else None
            if cur is None:
                return self.variants[0]
        b = bucket(str(cur), salt=self.salt)
        for v, bound in zip(self.variants, self._bounds, strict=True):
            if b < bound:
                return v
        return self.variants[-1]  # unreachable when weights sum to 100


def bucket(value: str, salt: str = "") -> int:
    """Stable bucket in [0, 100) of a string: blake2b, identical in every process.

    Python's ``hash()`` is salted per process and would move users between variants.

    >>> bucket("user-42") == bucket("user-42") and 0 <= bucket("x", salt="s") < 100
    True
    """
    digest = hashlib.blake2b((salt + value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated, immutable schedule. Build it with :func:`parse_schedule`."""

    id: str
    deadline_ms: int
    stages: tuple[Stage, ...] = ()
    version: int = 1
    default: Default | None = None
    ignore: frozenset[str] = frozenset()
    split: Split | None = None

    def stages_for(self, request: dict[str, Any]) -> tuple[Stage, ...]:
        """The stages that govern ``request`` (its split variant's, else the schedule's)."""
        if self.split is None:
            return self.stages
        return self.split.variant_for(request).stages

    def models(self) -> tuple[str, ...]:
        """Every model id the schedule names (stages, variants, ignore), first seen first."""
        seen: dict[str, None] = {}
        for st in self.stages:
            seen[st.model] = None
        if self.split is not None:
            for v in self.split.variants:
                for st in v.stages:
                    seen[st.model] = None
        for m in sorted(self.ignore):
            seen[m] = None
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        """The canonical document; ``parse_schedule(s.to_dict()) == s``."""
        doc: dict[str, Any] = {
            "id": self.id,
            "version": self.version,
            "stages": _stages_doc(self.stages),
            "deadline_ms": self.deadline_ms,
            "ignore": sorted(self.ignore),
        }
        if self.default is not None:
            doc["default"] = {"outputs": {k: dict(v) for k, v in self.default.outputs.items()}}
        if self.split is not None:
            doc["split"] = {
                "field": self.split.field,
                "salt": self.split.salt,
                "variants": [
                    {"name": v.name, "weight": v.weight, "stages": _stages_doc(v.stages)}
                    for v in self.split.variants
                ],
            }
        return doc

    def to_json(self) -> str:
        """Compact, key-sorted JSON of :meth:`to_dict` (what the CLI puts on ``control``)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def _stages_doc(stages: tuple[Stage, ...]) -> list[dict[str, Any]]:
    return [{"model": s.model, "wait_ms": s.wait_ms} for s in stages]


#: Used before any schedule has arrived: no stages, so every request is answered at 50 ms
#: with reason "none" (no default outputs). It keeps the rendezvous answering, never hanging.
DEFAULT_SCHEDULE = Schedule(id="none", deadline_ms=50)


# ---------------------------------------------------------------- parsing and validation

_TOP = ("id", "version", "stages", "deadline_ms", "default", "ignore", "split")
_FEATURE_MAPS = ("numbers", "labels", "refs")


def parse_schedule(doc: str | bytes | dict[str, Any]) -> Schedule:
    """Parse (JSON first, then YAML) and validate a schedule; raise one :class:`ScheduleError`
    listing every problem with its field path."""
    if isinstance(doc, bytes | bytearray):
        try:
            doc = bytes(doc).decode()
        except UnicodeDecodeError as e:
            raise ScheduleError([f"schedule: not UTF-8 text ({e})"]) from None
    if isinstance(doc, str):
        doc = _load_text(doc)
    return _Validator().schedule(doc)


def _load_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as json_err:
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as yaml_err:
            msg = str(yaml_err).replace("\n", " ")
            raise ScheduleError(
                [f"schedule: neither JSON ({json_err}) nor YAML ({msg})"]
            ) from None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Validator:
    """Collects problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, path: str, expected: str, got: Any = None, *, show: bool = True) -> None:
        self.problems.append(f"{path}: {expected}" + (f", got {got!r}" if show else ""))

    def unknown_keys(self, path: str, obj: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for k in obj:
            if k not in allowed:
                where = f"{path}.{k}" if path else str(k)
                self.bad(where, f"unknown field (expected one of {', '.join(allowed)})",
                         show=False)

    def schedule(self, doc: Any) -> Schedule:
        if not isinstance(doc, dict):
            raise ScheduleError([f"schedule: must be an object (mapping), got {doc!r}"])
        self.unknown_keys("", doc, _TOP)

        sid = doc.get("id")
        if not isinstance(sid, str) or not sid.strip():
            if "id" not in doc:
                self.bad("id", "required, a non-empty string", show=False)
            else:
                self.bad("id", "must be a non-empty string", sid)
            sid = ""

        version = doc.get("version", 1)
        if not _is_int(version) or version < 1:
            self.bad("version", "must be a positive integer", version)
            version = 1

        split_doc = doc.get("split")
        stages = self.stages("stages", doc.get("stages", []))
        if split_doc is not None and stages:
            self.bad("stages", "must be empty when split is given "
                     "(each split.variants[i] carries its own stages)", show=False)

        split = None if split_doc is None else self.split(split_doc)
        all_stage_lists = [stages] if split is None else [v.stages for v in split.variants]

        deadline = doc.get("deadline_ms")
        if "deadline_ms" not in doc:
            self.bad("deadline_ms", "required, a positive integer (ms)", show=False)
            deadline = 0
        elif not _is_int(deadline) or deadline <= 0:
            self.bad("deadline_ms", "must be a positive integer (ms)", deadline)
            deadline = 0
        else:
            last = max((sl[-1].wait_ms for sl in all_stage_lists if sl), default=-1)
            if deadline <= last:
                self.bad("deadline_ms", f"must be greater than the last stage wait_ms ({last})",
                         deadline)

        default = None if doc.get("default") is None else self.default(doc["default"])

        ignore: set[str] = set()
        ig = doc.get("ignore", [])
        if not isinstance(ig, list):
            self.bad("ignore", "must be a list of model ids", ig)
        else:
            for i, m in enumerate(ig):
                if not isinstance(m, str) or not m:
                    self.bad(f"ignore[{i}]", "must be a non-empty string", m)
                else:
                    ignore.add(m)
            staged = {st.model for sl in all_stage_lists for st in sl}
            for m in sorted(ignore & staged):
                self.bad("ignore", f"model {m!r} is also in stages; a model either answers or "
                         "is ignored", show=False)

        if self.problems:
            raise ScheduleError(self.problems)
        return Schedule(id=sid, version=version, stages=stages, deadline_ms=deadline,
                        default=default, ignore=frozenset(ignore), split=split)

    def stages(self, path: str, raw: Any) -> tuple[Stage, ...]:
        if not isinstance(raw, list):
            self.bad(path, "must be a list of {model, wait_ms}", raw)
            return ()
        out: list[Stage] = []
        prev: int | None = None
        seen: set[str] = set()
        for i, st in enumerate(raw):
            p = f"{path}[{i}]"
            if not isinstance(st, dict):
                self.bad(p, "must be an object {model, wait_ms}", st)
                continue
            self.unknown_keys(p, st, ("model", "wait_ms"))
            model: Any = st.get("model")
            wait: Any = st.get("wait_ms")
            ok = True
            if not isinstance(model, str) or not model:
                self.bad(f"{p}.model", "must be a non-empty string (a model id)", model)
                ok = False
            elif model in seen:
                self.bad(f"{p}.model", "duplicate: a model may appear in one stage only", model)
                ok = False
            if not _is_int(wait) or wait < 0:
                self.bad(f"{p}.wait_ms", "must be a non-negative integer", wait)
                ok = False
            elif prev is not None and wait <= prev:
                self.bad(f"{p}.wait_ms", "must be greater than the previous stage's wait_ms "
                         f"({prev}): offsets are measured from the request, not cumulative sums",
                         wait)
                ok = False
            if ok:
                seen.add(model)
                prev = wait
                out.append(Stage(model, wait))
        return tuple(out)

    def default(self, raw: Any) -> Default | None:
        if not isinstance(raw, dict):
            self.bad("default", "must be an object {outputs: {numbers, labels, refs}}", raw)
            return None
        self.unknown_keys("default", raw, ("outputs",))
        outs = raw.get("outputs")
        if not isinstance(outs, dict):
            self.bad("default.outputs", "must be an object {numbers: {...}, labels: {...}}", outs)
            return None
        self.unknown_keys("default.outputs", outs, _FEATURE_MAPS)
        feats: dict[str, dict[str, Any]] = {}
        n0 = len(self.problems)
        for name in _FEATURE_MAPS:
            m = outs.get(name, {})
            p = f"default.outputs.{name}"
            if not isinstance(m, dict):
                self.bad(p, "must be a mapping", m)
                continue
            want_num = name == "numbers"
            conv: dict[str, Any] = {}
            for k, v in m.items():
                if want_num and not _is_num(v):
                    self.bad(f"{p}.{k}", "must be a number", v)
                elif not want_num and not isinstance(v, str):
                    self.bad(f"{p}.{k}", "must be a string", v)
                else:
                    conv[str(k)] = float(v) if want_num else v
            feats[name] = conv
        return Default(feats) if len(self.problems) == n0 else None

    def split(self, raw: Any) -> Split | None:
        if not isinstance(raw, dict):
            self.bad("split", "must be an object {field, variants}", raw)
            return None
        self.unknown_keys("split", raw, ("field", "variants", "salt"))
        fld, salt, variants = raw.get("field"), raw.get("salt", ""), raw.get("variants")
        n0 = len(self.problems)
        if not isinstance(fld, str) or not fld or "" in fld.split("."):
            self.bad("split.field", "must be a dotted path into the request, e.g. 'entity_key' "
                     "or 'inputs.labels.user_id'", fld)
        if not isinstance(salt, str):
            self.bad("split.salt", "must be a string", salt)
        out: list[Variant] = []
        if not isinstance(variants, list) or not variants:
            self.bad("split.variants", "must be a non-empty list of {name, weight, stages}",
                     variants)
        else:
            names: set[str] = set()
            total = 0
            for i, v in enumerate(variants):
                p = f"split.variants[{i}]"
                if not isinstance(v, dict):
                    self.bad(p, "must be an object {name, weight, stages}", v)
                    continue
                self.unknown_keys(p, v, ("name", "weight", "stages"))
                name, weight = v.get("name"), v.get("weight")
                if not isinstance(name, str) or not name:
                    self.bad(f"{p}.name", "must be a non-empty string", name)
                elif name in names:
                    self.bad(f"{p}.name", "duplicate variant name", name)
                names.add(name if isinstance(name, str) else "")
                if not _is_int(weight) or not 0 <= weight <= 100:
                    self.bad(f"{p}.weight", "must be an integer percentage in [0, 100]", weight)
                    weight = 0
                total += weight
                if "stages" not in v:
                    self.bad(f"{p}.stages", "required, a list of {model, wait_ms}", show=False)
                stages = self.stages(f"{p}.stages", v.get("stages", []))
                out.append(Variant(str(name), weight, stages))
            if total != 100:
                self.bad("split.variants", f"weights must sum to 100, they sum to {total}",
                         show=False)
        if len(self.problems) != n0:
            return None
        return Split(field=str(fld), variants=tuple(out), salt=str(salt))
