"""Model packages: the unit the score job runs (DESIGN.md section 4, "score").

A model package is a directory::

    models/fraud_logreg/
        manifest.yaml       name, version, entry point, declared inputs/outputs, ...
        predict.py          the model author's code: predict(inputs) -> outputs
        requirements.txt    pinned (==) Python requirements it was certified with
        coefficients.json   artifacts (trained; listed in the manifest)

``manifest.yaml``::

    name: fraud_logreg            # model id: [a-z0-9_-]+
    version: "1"                  # model version (string; a bare int is accepted)
    entry_point: predict:predict  # module:function or module:Class, module file in the dir
    inputs:                       # flat names the model receives (see parse_input_name)
      - inputs.numbers.amount
      - external_state.numbers.avg_amount
      - internal_state.card_velocity_kmh
    outputs: [numbers.fraud_probability, labels.decision]
    requirements: requirements.txt
    artifacts: [coefficients.json]
    stateful: false               # true: predict(inputs, state) -> (outputs, new_state)
    description: optional free text

The author only writes ``predict(inputs) -> outputs``: ``inputs`` is a flat dict
``{declared name: value}`` taken from the Request (absent values are ``None``, never
invented) and ``outputs`` is ``{"numbers": {...}, "labels": {...}}``. Everything else -
Kafka, provenance, timing, errors, keyed state - belongs to the scaffold, so the same
package runs unchanged in the score job, in tests and on the decoy archive.

>>> parse_input_name("external_state.numbers.avg_amount")
('external_state', 'numbers', 'avg_amount')
>>> request = {"inputs": {"numbers": {"amount": 12.5}, "labels": {}, "refs": {}},
...            "external_state": None, "internal_state": {"card_velocity_kmh": 3.0}}
>>> extract_inputs(["inputs.numbers.amount", "external_state.numbers.avg_amount",
...                 "internal_state.card_velocity_kmh"], request)
{'inputs.numbers.amount': 12.5, 'external_state.numbers.avg_amount': None, \
'internal_state.card_velocity_kmh': 3.0}
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from udfs.codec import envelope as default_envelope

Record = dict[str, Any]
Outputs = dict[str, dict[str, Any]]
EnvelopeFn = Callable[[str, str], Record]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.yaml"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")

_REQUIRED = ("name", "version", "entry_point", "inputs", "outputs")
_OPTIONAL = ("requirements", "artifacts", "stateful", "description")

#: where a declared input may come from: <section>.<map>.<key>, or internal_state.<key>
INPUT_SECTIONS = {"inputs": ("numbers", "labels", "refs"), "external_state": ("numbers", "labels")}
#: what a model may output: <map>.<key>
OUTPUT_MAPS = ("numbers", "labels", "refs")


class ModelPackageError(Exception):
    """Base of every error about a model package."""


class ManifestError(ModelPackageError):
    """The manifest (or a file it names) is wrong; the message says where and what to do."""

    def __init__(self, path: Path | str, field: str | None, problem: str) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: field {field!r}" if field else str(self.path)
        super().__init__(f"{where}: {problem}")


class ModelLoadError(ModelPackageError):
    """The entry point could not be imported or constructed."""


class ModelOutputError(ModelPackageError):
    """predict() returned something that does not match the manifest's declared outputs."""


def parse_input_name(name: str) -> tuple[str, str | None, str]:
    """Split a declared input name into (section, map or None, key); ValueError if invalid.

    >>> parse_input_name("internal_state.card_velocity_kmh")
    ('internal_state', None, 'card_velocity_kmh')
    """
    section, _, rest = name.partition(".")
    if section == "internal_state":
        if rest and _KEY.match(rest):
            return section, None, rest
    elif section in INPUT_SECTIONS:
        mapname, _, key = rest.partition(".")
        if mapname in INPUT_SECTIONS[section] and key and _KEY.match(key):
            return section, mapname, key
    raise ValueError(
        f"{name!r} is not an input name; use inputs.(numbers|labels|refs).<key>, "
        "external_state.(numbers|labels).<key> or internal_state.<key>"
    )


def parse_output_name(name: str) -> tuple[str, str]:
    """Split a declared output name into (map, key); ValueError if invalid."""
    mapname, _, key = name.partition(".")
    if mapname in OUTPUT_MAPS and key and _KEY.match(key):
        return mapname, key
    raise ValueError(f"{name!r} is not an output name; use (numbers|labels|refs).<key>")


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.yaml; ``package_dir`` is where relative file names resolve."""

    package_dir: Path
    name: str
    version: str
    entry_point: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    requirements: str | None = None
    artifacts: tuple[str, ...] = ()
    stateful: bool = False
    description: str = ""

    @property
    def module_file(self) -> Path:
        module = self.entry_point.split(":", 1)[0]
        return self.package_dir.joinpath(*module.split(".")).with_suffix(".py")

    @property
    def attribute(self) -> str:
        return self.entry_point.split(":", 1)[1]

    def artifact_path(self, name: str) -> Path:
        return self.package_dir / name


def _manifest_file(path: Path | str) -> Path:
    p = Path(path)
    return p / MANIFEST_FILE if p.is_dir() else p


def _str_list(file: Path, field: str, value: Any, check: Callable[[str], Any] | None) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(file, field, f"must be a list of strings, got {value!r}")
    if len(set(value)) != len(value):
        dup = sorted({v for v in value if value.count(v) > 1})
        raise ManifestError(file, field, f"duplicate entries {dup}; list each name once")
    if check:
        for v in value:
            try:
                check(v)
            except ValueError as e:
                raise ManifestError(file, field, str(e)) from None
    return value


def load_manifest(path: Path | str) -> Manifest:
    """Read and validate a package's manifest (a package dir or the manifest file itself).

    Checks the fields and that the entry module and requirements file exist and that every
    requirement is pinned with ``==``; artifacts are checked by :func:`load_model`, because
    they exist only after training.
    """
    file = _manifest_file(path).resolve()
    if not file.is_file():
        raise ManifestError(
            file, None, f"no {MANIFEST_FILE}; a model package is a directory with one"
        )
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ManifestError(file, None, f"not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ManifestError(file, None, "must be a YAML mapping of manifest fields")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ManifestError(
            file, unknown[0], f"unknown field; allowed fields: {', '.join(_REQUIRED + _OPTIONAL)}"
        )
    for field in _REQUIRED:
        if raw.get(field) in (None, "", []):
            raise ManifestError(file, field, "missing; every manifest must set it")
    pkg = file.parent

    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ManifestError(file, "name", f"{name!r} must match [a-z0-9][a-z0-9_-]* (a model id)")
    version = raw["version"]
    if isinstance(version, bool) or not isinstance(version, str | int):
        raise ManifestError(file, "version", f"{version!r} must be a string such as \"1\"")
    version = str(version)
    if not _KEY.match(version):
        raise ManifestError(file, "version", f"{version!r} may use only letters, digits and ._:-")

    entry = raw["entry_point"]
    if not isinstance(entry, str) or not _ENTRY.match(entry):
        raise ManifestError(
            file, "entry_point", f"{entry!r} must be 'module:function' or 'module:Class'"
        )

    inputs = _str_list(file, "inputs", raw["inputs"], parse_input_name)
    outputs = _str_list(file, "outputs", raw["outputs"], parse_output_name)
    artifacts = _str_list(file, "artifacts", raw.get("artifacts") or [], None)
    for a in artifacts:
        if Path(a).is_absolute() or ".." in Path(a).parts:
            raise ManifestError(file, "artifacts", f"{a!r} must be a file name inside the package")

    stateful = raw.get("stateful", False)
    if not isinstance(stateful, bool):
        raise ManifestError(file, "stateful", f"{stateful!r} must be true or false")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise ManifestError(file, "description", "must be a string")

    requirements = raw.get("requirements")
    if requirements is not None:
        if not isinstance(requirements, str):
            raise ManifestError(file, "requirements", "must be a file name, e.g. requirements.txt")
        _check_requirements_file(file, pkg / requirements)

    manifest = Manifest(
        package_dir=pkg,
        name=name,
        version=version,
        entry_point=entry,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        requirements=requirements,
        artifacts=tuple(artifacts),
        stateful=stateful,
        description=description,
    )
    if not manifest.module_file.is_file():
        raise ManifestError(
            file, "entry_point", f"module file {manifest.module_file.name} not found in {pkg}"
        )
    return manifest


def _requirement_lines(req_file: Path) -> list[str]:
    lines = (ln.split("#", 1)[0].strip() for ln in req_file.read_text().splitlines())
    return [ln for ln in lines if ln]


def _check_requirements_file(manifest_file: Path, req_file: Path) -> None:
    if not req_file.is_file():
        raise ManifestError(manifest_file, "requirements", f"file {req_file.name} not found")
    for line in _requirement_lines(req_file):
        if not _PIN.match(line):
            raise ManifestError(
                manifest_file,
                "requirements",
                f"{req_file.name}: {line!r} is not pinned; write name==version "
                "(the model must run in the environment it was certified in)",
            )


def requirement_mismatches(manifest: Manifest) -> list[str]:
    """Pinned requirements that the running interpreter does not satisfy (empty if all do)."""
    if manifest.requirements is None:
        return []
    out = []
    for line in _requirement_lines(manifest.package_dir / manifest.requirements):
        dist, _, wanted = line.partition("==")
        dist = dist.split("[", 1)[0]
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            have = "not installed"
        if have != wanted:
            out.append(f"{dist}=={wanted} (have {have})")
    return out


# --------------------------------------------------------------------------- inputs


_Compiled = list[tuple[str, str, str | None, str]]


def _compile_inputs(names: Iterable[str]) -> _Compiled:
    return [(n, *parse_input_name(n)) for n in names]


def _extract(compiled: _Compiled, request: Mapping[str, Any]) -> Record:
    internal = request.get("internal_state") or {}
    external = request.get("external_state") or {}
    inputs = request.get("inputs") or {}
    out: Record = {}
    for name, section, mapname, key in compiled:
        if section == "internal_state":
            out[name] = internal.get(key)
        else:
            src = inputs if section == "inputs" else external
            out[name] = (src.get(mapname) or {}).get(key)
    return out


def extract_inputs(names: Iterable[str], request: Mapping[str, Any]) -> Record:
    """The flat ``{declared name: value}`` dict a model sees; absent values are ``None``."""
    return _extract(_compile_inputs(names), request)


# --------------------------------------------------------------------------- loading


def import_package_module(package_dir: Path | str, module: str) -> ModuleType:
    """Import ``module`` (a file in ``package_dir``) under a unique name.

    No ``sys.path`` change: two packages with a ``predict.py`` each (or two versions of one)
    load side by side. The module is registered in ``sys.modules`` under its unique name so
    that pickling and dataclasses inside it work.
    """
    file = Path(package_dir).joinpath(*module.split(".")).with_suffix(".py")
    unique = f"rdv_model_{re.sub(r'[^0-9A-Za-z_]', '_', module)}_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(unique, file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{file}: cannot import (not a Python file?)")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[unique] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        del sys.modules[unique]
        raise ModelLoadError(f"{file}: import failed: {type(e).__name__}: {e}") from e
    return mod


class LoadedModel:
    """A package ready to predict: the scaffold calls :meth:`predict` per request."""

    def __init__(self, manifest: Manifest, predict_fn: Callable[..., Any]) -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self.stateful = manifest.stateful
        self._predict = predict_fn
        self._inputs = _compile_inputs(manifest.inputs)
        self._outputs = {m: set() for m in OUTPUT_MAPS}  # type: dict[str, set[str]]
        for o in manifest.outputs:
            mapname, key = parse_output_name(o)
            self._outputs[mapname].add(key)

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r}, version={self.version!r})"

    def extract_inputs(self, request: Mapping[str, Any]) -> Record:
        """The declared inputs of this model, taken from a Request dict (absent -> None)."""
        return _extract(self._inputs, request)

    def predict(
        self, request: Mapping[str, Any], state: Record | None = None
    ) -> tuple[Outputs, Record | None]:
        """Run the model on a Request dict; returns (validated outputs, new state).

        Outputs come back as a full ``rdv.Features`` dict (numbers, labels, refs). For a
        stateless model the state is passed through unchanged.
        """
        inputs = self.extract_inputs(request)
        if self.stateful:
            got = self._predict(inputs, state)
            if not (isinstance(got, tuple) and len(got) == 2):
                raise ModelOutputError(
                    f"model {self.name} {self.version}: stateful predict() must return "
                    f"(outputs, new_state), got {type(got).__name__}"
                )
            outputs, new_state = got
            if new_state is not None and not isinstance(new_state, dict):
                raise ModelOutputError(
                    f"model {self.name} {self.version}: new_state must be a dict or None"
                )
        else:
            outputs, new_state = self._predict(inputs), state
        return self.validate_outputs(outputs), new_state

    def validate_outputs(self, outputs: Any) -> Outputs:
        """Check outputs against the declared ones and normalise them to rdv.Features."""
        who = f"model {self.name} {self.version}"
        if not isinstance(outputs, Mapping):
            raise ModelOutputError(f"{who}: predict() must return a dict, got {type(outputs)}")
        extra_maps = set(outputs) - set(OUTPUT_MAPS)
        if extra_maps:
            raise ModelOutputError(f"{who}: unknown output sections {sorted(extra_maps)}")
        result: Outputs = {}
        missing: list[str] = []
        extra: list[str] = []
        for mapname in OUTPUT_MAPS:
            got = outputs.get(mapname) or {}
            if not isinstance(got, Mapping):
                raise ModelOutputError(f"{who}: outputs[{mapname!r}] must be a dict")
            declared = self._outputs[mapname]
            missing += [f"{mapname}.{k}" for k in sorted(declared - set(got))]
            extra += [f"{mapname}.{k}" for k in sorted(set(got) - declared)]
            result[mapname] = {}
            for k, v in got.items():
                if mapname == "numbers":
                    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
                        raise ModelOutputError(f"{who}: numbers.{k} = {v!r} is not a finite number")
                    result[mapname][k] = float(v)
                else:
                    if not isinstance(v, str):
                        raise ModelOutputError(f"{who}: {mapname}.{k} = {v!r} is not a string")
                    result[mapname][k] = v
        if missing or extra:
            raise ModelOutputError(
                f"{who}: outputs do not match the manifest: missing {missing}, extra {extra} "
                "(fix predict() or the manifest's outputs)"
            )
        return result


def load_model(path: Path | str, *, strict_requirements: bool = False) -> LoadedModel:
    """Load a package directory: validate, check artifacts, import and build the entry point.

    The entry point is either ``predict(inputs)`` (``predict(inputs, state)`` if stateful) or
    a class constructed as ``Class(package_dir)`` whose ``predict`` method is used; a
    function finds its artifacts next to its module (``Path(__file__).parent``).
    """
    manifest = load_manifest(path)
    file = manifest.package_dir / MANIFEST_FILE
    for a in manifest.artifacts:
        if not manifest.artifact_path(a).is_file():
            raise ManifestError(
                file,
                "artifacts",
                f"artifact {a} not found in {manifest.package_dir}; train the model first "
                "(for the demo models: python -m udfs.demo.train --out models/)",
            )
    mismatches = requirement_mismatches(manifest)
    if mismatches:
        msg = f"{manifest.name} {manifest.version}: requirements not met: {', '.join(mismatches)}"
        if strict_requirements:
            raise ModelLoadError(msg)
        log.warning(msg)
    module, attr = manifest.entry_point.split(":", 1)
    mod = import_package_module(manifest.package_dir, module)
    target = getattr(mod, attr, None)
    if target is None:
        raise ManifestError(file, "entry_point", f"{manifest.module_file.name} has no {attr!r}")
    if isinstance(target, type):
        try:
            obj = target(manifest.package_dir)
        except Exception as e:
            raise ModelLoadError(
                f"{manifest.name}: {attr}(package_dir) failed: {type(e).__name__}: {e}"
            ) from e
        fn = getattr(obj, "predict", None)
        if not callable(fn):
            raise ManifestError(file, "entry_point", f"class {attr} has no predict() method")
        return LoadedModel(manifest, fn)
    if not callable(target):
        raise ManifestError(file, "entry_point", f"{attr!r} is neither a function nor a class")
    return LoadedModel(manifest, target)


# --------------------------------------------------------------------------- scores


def build_score(
    request: Mapping[str, Any],
    model: LoadedModel | Manifest,
    outputs: Mapping[str, Any] | None,
    latency_us: int,
    error: str | None = None,
    envelope_fn: EnvelopeFn = default_envelope,
) -> Record:
    """A Score record (schemas/Score.avsc) for one model's answer to one request.

    Provenance (hops, tags, trace) and diagnostics carry forward from the request, plus a
    ``score:<model name>`` hop, so a score can be traced back through augment to the client.
    """
    rec = envelope_fn(f"score:{model.name}", model.version)
    prov = request.get("provenance") or {}
    rec["provenance"] = {
        "hops": [dict(h) for h in prov.get("hops") or []] + rec["provenance"]["hops"],
        "tags": dict(prov.get("tags") or {}),
        "trace": dict(prov["trace"]) if prov.get("trace") else None,
    }
    rec["diagnostics"] = request.get("diagnostics")
    outs = outputs or {}
    rec.update(
        request_id=request["request_id"],
        entity_key=request["entity_key"],
        model_id=model.name,
        model_version=model.version,
        outputs={
            "numbers": dict(outs.get("numbers") or {}),
            "labels": dict(outs.get("labels") or {}),
            "refs": dict(outs.get("refs") or {}),
        },
        latency_us=int(latency_us),
        request_timestamp=request["timestamp"],
        error=error,
    )
    return rec


def score_request(
    model: LoadedModel,
    request: Mapping[str, Any],
    state: Record | None = None,
    envelope_fn: EnvelopeFn = default_envelope,
) -> tuple[Record, Record | None]:
    """Predict, time and wrap into a Score; a failing model gives a Score with ``error`` set.

    The state is returned unchanged when the model fails, so a bad request cannot wipe an
    entity's keyed state.
    """
    t0 = time.perf_counter_ns()
    try:
        outputs, new_state = model.predict(request, state)
        error = None
    except Exception as e:  # noqa: BLE001 - any model failure becomes an error score
        outputs, new_state, error = None, state, f"{type(e).__name__}: {e}"
    latency_us = (time.perf_counter_ns() - t0) // 1000
    return build_score(request, model, outputs, latency_us, error, envelope_fn), new_state
