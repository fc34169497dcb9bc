"""The labeling task model: contexts and honeypots in, shuffled blinded tasks out.

Everything here is deterministic in ``seed`` so an export can be rebuilt and audited, and nothing
here touches the platform formats (``formats.py``) or the labels database (``store.py``).
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from core.artifacts import COMMON_KEYS, ArtifactManifest, check_declared, package_versions
from core.atomic import sha256_json
from core.types import Context, Turn
from core.user_files import UserFileError, json_lines, loads_user_json, read_user_text
from dialog.labeling.errors import LabelingError, RowProblem

POINTWISE = "pointwise"
PAIRWISE = "pairwise"
FIVE_POINT = "five-point"
BINARY = "binary"
# Signed strength from side A's point of view; the order is what raters see on the five-point scale.
CHOICE_SCORES: dict[str, dict[str, int]] = {
    FIVE_POINT: {"a_much_better": 2, "a_better": 1, "same": 0, "b_better": -1, "b_much_better": -2},
    BINARY: {"a": 1, "b": -1},
}


@dataclass(frozen=True)
class Honeypot:
    """A control item with a known answer: pointwise (response + golden) or pairwise (better/worse)."""

    context: Context
    response: str | None = None
    sensible: bool | None = None
    specific: bool | None = None
    better: str | None = None
    worse: str | None = None
    hint: str = ""

    @property
    def mode(self) -> str:
        return POINTWISE if self.response is not None else PAIRWISE


@dataclass(frozen=True)
class Task:
    """One unit of rater work. ``responses`` has one reply (pointwise) or two, A then B (pairwise)."""

    task_id: str
    context_id: str
    responses: tuple[str, ...]
    honeypot: bool = False
    golden: dict[str, Any] | None = None
    hint: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"context_id": self.context_id, "responses": list(self.responses), "honeypot": self.honeypot,
                "golden": self.golden, "hint": self.hint}

    @classmethod
    def from_json(cls, task_id: str, obj: Mapping[str, Any]) -> Task:
        return cls(task_id, obj["context_id"], tuple(obj["responses"]), bool(obj["honeypot"]),
                   obj.get("golden"), obj.get("hint", ""))


@dataclass
class BuiltTasks:
    tasks: list[Task]
    contexts: dict[str, Context]
    # task id -> opaque system ids behind it (pointwise: all systems sharing that reply; pairwise: [A, B]).
    task_systems: dict[str, list[str]]
    swapped: dict[str, bool] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    round_id: str = ""


def turns_to_json(context: Context) -> list[dict[str, str]]:
    return [{"speaker": t.speaker, "text": t.text} for t in context.turns]


def _parse_turns(value: Any, where: str) -> tuple[Context | None, str]:
    if not isinstance(value, list) or not value:
        return None, "'turns' must be a non-empty list of {\"speaker\": ..., \"text\": ...}"
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or set(turn) != {"speaker", "text"}:
            return None, f"turns[{i}] must be an object with exactly 'speaker' and 'text'"
        if not all(isinstance(turn[k], str) and turn[k].strip() for k in ("speaker", "text")):
            return None, f"turns[{i}]: 'speaker' and 'text' must be non-empty strings"
        turns.append(Turn(turn["speaker"].strip(), turn["text"].strip()))
    return Context(tuple(turns)), ""


def _jsonl_objects(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[RowProblem]]:
    path = Path(path)
    if not path.is_file():
        raise LabelingError(f"{path} does not exist or is not a file")
    try:
        text = read_user_text(path)
    except UserFileError as exc:
        raise LabelingError(str(exc)) from exc
    rows, problems = [], []
    for number, obj, broken in json_lines(text):
        if broken:
            problems.append(RowProblem(path.name, f"line {number}", f"not valid JSON ({broken})"))
            continue
        if not isinstance(obj, dict):
            problems.append(RowProblem(path.name, f"line {number}", "expected a JSON object"))
            continue
        rows.append((number, obj))
    if not rows and not problems:
        raise LabelingError(f"{path} holds no rows; expected one JSON object per line")
    return rows, problems


def read_contexts(path: Path) -> dict[str, Context]:
    """Read ``{"id": ..., "turns": [{"speaker": ..., "text": ...}, ...], "meta": {...}?}`` lines."""
    rows, problems = _jsonl_objects(path)
    contexts: dict[str, Context] = {}
    for number, obj in rows:
        where = f"line {number}"
        unknown = set(obj) - {"id", "turns", "meta"}
        cid = obj.get("id")
        context, reason = _parse_turns(obj.get("turns"), where)
        if unknown:
            reason = f"unknown field(s) {sorted(unknown)}; allowed: id, turns, meta"
        elif not isinstance(cid, str) or not cid.strip():
            reason = "'id' must be a non-empty string"
        elif cid in contexts:
            reason = f"duplicate id {cid!r}"
        if reason or context is None:
            problems.append(RowProblem(Path(path).name, where, reason))
            continue
        contexts[cid] = context
    if problems:
        raise LabelingError(f"{path}: fix these context rows and run again", problems)
    return contexts


def read_honeypots(path: Path) -> list[Honeypot]:
    """Read control items: ``{"turns", "response", "sensible", "specific", "hint"?}`` (pointwise) or
    ``{"turns", "better", "worse", "hint"?}`` (pairwise)."""
    rows, problems = _jsonl_objects(path)
    honeypots: list[Honeypot] = []
    for number, obj in rows:
        context, reason = _parse_turns(obj.get("turns"), f"line {number}")
        hint = obj.get("hint", "")
        if "response" in obj:
            pointwise = {"turns", "response", "sensible", "specific", "hint"}
            if set(obj) - pointwise:
                reason = reason or f"unknown field(s) {sorted(set(obj) - pointwise)}"
            elif not isinstance(obj["response"], str) or not obj["response"].strip():
                reason = reason or "'response' must be a non-empty string"
            elif not isinstance(obj.get("sensible"), bool) or not isinstance(obj.get("specific"), bool):
                reason = reason or "'sensible' and 'specific' must be true or false"
            elif obj["specific"] and not obj["sensible"]:
                reason = reason or "specific=true with sensible=false: a specific reply must be sensible"
            item = dict(response=obj.get("response"), sensible=obj.get("sensible"), specific=obj.get("specific"))
        else:
            pairwise = {"turns", "better", "worse", "hint"}
            texts = [obj.get("better"), obj.get("worse")]
            if set(obj) - pairwise:
                reason = reason or f"unknown field(s) {sorted(set(obj) - pairwise)}"
            elif not all(isinstance(t, str) and t.strip() for t in texts):
                reason = reason or "need 'response' (pointwise) or non-empty 'better' and 'worse' (pairwise)"
            elif texts[0] == texts[1]:
                reason = reason or "'better' and 'worse' are the same text"
            item = dict(better=obj.get("better"), worse=obj.get("worse"))
        if not isinstance(hint, str):
            reason = reason or "'hint' must be a string"
        if reason or context is None:
            problems.append(RowProblem(Path(path).name, f"line {number}", reason))
            continue
        honeypots.append(Honeypot(context=context, hint=hint, **item))
    if problems:
        raise LabelingError(f"{path}: fix these honeypot rows and run again", problems)
    return honeypots


def _task_ids(rng: random.Random, n: int, round_id: str) -> list[str]:
    """Random ids, so neither the order nor the id tells a rater which tasks are controls. Salted with the
    round id: a second round over the same contexts and seed gets its own ids, so its answers neither
    collide with the first round's in the label store nor pass for them."""
    ids: set[str] = set()
    while len(ids) < n:
        ids.add(f"t{rng.getrandbits(64):016x}")
    drawn = rng.sample(sorted(ids), n)
    return [f"t{hashlib.sha256(f'{round_id}:{t}'.encode()).hexdigest()[:16]}" if round_id else t for t in drawn]


def _pick_honeypots(pool: Sequence[Honeypot], n_items: int, rate: float, rng: random.Random,
                    warnings: list[str]) -> list[Honeypot]:
    if not 0.0 <= rate < 1.0:
        raise LabelingError(f"honeypot rate {rate} must be in [0, 1); 0.1 means one control task in ten")
    wanted = round(rate * n_items / (1.0 - rate))
    if wanted == 0:
        return []
    if not pool:
        warnings.append("no honeypots given: raters cannot be screened (pass --honeypots)")
        return []
    if wanted > len(pool):
        warnings.append(f"{wanted} honeypot slots but only {len(pool)} honeypots: some are shown twice")
    picked: list[Honeypot] = []
    while len(picked) < wanted:
        picked += rng.sample(list(pool), min(len(pool), wanted - len(picked)))
    return picked


def opaque_system_ids(names: Sequence[str], seed: int, blind: bool) -> dict[str, str]:
    """Real name -> id shown in the manifest; blinded ids are random so they carry no order."""
    if not blind:
        return {name: name for name in names}
    rng = random.Random(f"{seed}:systems")
    codes = rng.sample(range(0x1000, 0x10000), len(names))
    return {name: f"sys-{code:04x}" for name, code in zip(sorted(names), codes, strict=True)}


def build_tasks(contexts: Mapping[str, Context], responses: Mapping[str, Mapping[str, str]], mode: str,
                honeypots: Sequence[Honeypot], honeypot_rate: float, seed: int,
                system_ids: Mapping[str, str], round_id: str | None = None) -> BuiltTasks:
    """``responses[context_id][system_name]`` -> shuffled tasks with honeypots mixed in.

    Order, sides and honeypot placement follow ``seed``; task ids also depend on ``round_id`` (fresh and
    random unless given; the manifest records it, so passing it back rebuilds the export exactly).

    Pointwise: identical replies from several systems share one task (raters are not asked twice).
    Pairwise: every pair of systems per context, sides drawn at random; identical replies are skipped.
    """
    rng = random.Random(f"{seed}:{mode}")
    wrong_mode = [i for i, h in enumerate(honeypots) if h.mode != mode]
    if wrong_mode:
        fields = "response/sensible/specific" if mode == POINTWISE else "better/worse"
        raise LabelingError(f"honeypots #{[i + 1 for i in wrong_mode][:10]} are not {mode} honeypots; "
                            f"{mode} exports need {fields}")
    items: list[tuple[str, tuple[str, ...], list[str], bool]] = []
    warnings: list[str] = []
    identical = 0
    for cid in contexts:
        by_system = responses[cid]
        if mode == POINTWISE:
            groups: dict[str, list[str]] = {}
            for name in sorted(by_system):
                groups.setdefault(by_system[name], []).append(system_ids[name])
            items += [(cid, (text,), ids, False) for text, ids in groups.items()]
            continue
        for first, second in combinations(sorted(by_system), 2):
            if by_system[first] == by_system[second]:
                identical += 1
                continue
            swap = rng.random() < 0.5
            a, b = (second, first) if swap else (first, second)
            items.append((cid, (by_system[a], by_system[b]), [system_ids[a], system_ids[b]], swap))
    if identical:
        warnings.append(f"{identical} pairs skipped: both systems gave the same reply (count them as ties)")
    if not items:
        raise LabelingError("nothing to label: every pair of systems gave identical replies to every context")
    picked = _pick_honeypots(honeypots, len(items), honeypot_rate, rng, warnings)
    round_id = secrets.token_hex(8) if round_id is None else round_id
    ids = _task_ids(rng, len(items) + len(picked), round_id)
    built = BuiltTasks([], dict(contexts), {}, warnings=warnings, round_id=round_id)
    for task_id, (cid, texts, systems, swap) in zip(ids, items, strict=False):
        built.tasks.append(Task(task_id, cid, texts))
        built.task_systems[task_id] = systems
        if mode == PAIRWISE:
            built.swapped[task_id] = swap
    for n, (task_id, pot) in enumerate(zip(ids[len(items):], picked, strict=True)):
        cid = f"honeypot-{n + 1}"
        built.contexts[cid] = pot.context
        if mode == POINTWISE:
            golden = {"sensible": pot.sensible, "specific": pot.specific}
            texts = (pot.response or "",)
        else:
            better_on_a = rng.random() < 0.5
            golden = {"better": "a" if better_on_a else "b"}
            texts = (pot.better or "", pot.worse or "") if better_on_a else (pot.worse or "", pot.better or "")
        built.tasks.append(Task(task_id, cid, texts, True, golden, pot.hint or _default_hint(mode, golden)))
    rng.shuffle(built.tasks)
    return built


_POINTWISE_HINTS = {(False, False): "This reply does not make sense in this dialogue.",
                    (True, False): "This reply makes sense but would fit almost any dialogue, so it is not specific.",
                    (True, True): "This reply makes sense and is specific to this dialogue."}


def _default_hint(mode: str, golden: Mapping[str, Any]) -> str:
    if mode == PAIRWISE:
        return f"Reply {golden['better'].upper()} is clearly better here."
    return _POINTWISE_HINTS[(bool(golden["sensible"]), bool(golden["sensible"] and golden["specific"]))]


MANIFEST_NAME = "manifest.json"
KEY_NAME = "key.json"
_SCHEMA = "repliq.ssa-export/1"
BATCH_KIND = "labeling-batch"
# Beside the hashed body: its hash, advice, upload-file digests added after writing, the artifact fields.
_UNHASHED = ("hash", "export_id", "warnings", "files", *COMMON_KEYS)


@dataclass
class ExportInfo:
    """A loaded, hash-checked export manifest: what was sent out and which answers are expected."""

    export_id: str
    mode: str
    scale: str | None
    overlap: int
    seed: int
    fmt: str
    contexts: dict[str, Context]
    tasks: dict[str, Task]


@dataclass
class ExportKey:
    """The blinding key: which real system is behind each task (and side)."""

    systems: dict[str, str]
    task_systems: dict[str, list[str]]
    swapped: dict[str, bool]

    def names(self, task_id: str) -> list[str]:
        return [self.systems[s] for s in self.task_systems.get(task_id, [])]


def manifest_json(built: BuiltTasks, mode: str, scale: str | None, overlap: int, seed: int, fmt: str,
                  blind: bool, honeypot_rate: float) -> dict[str, Any]:
    body = {
        "schema": _SCHEMA, "mode": mode, "scale": scale, "overlap": overlap, "seed": seed, "format": fmt,
        "blind": blind, "honeypot_rate": honeypot_rate, "round": built.round_id,
        "task_ids": [t.task_id for t in built.tasks],
        "tasks": {t.task_id: t.to_json() for t in built.tasks},
        "contexts": {cid: turns_to_json(c) for cid, c in built.contexts.items()},
        "counts": {"tasks": len(built.tasks), "honeypots": sum(t.honeypot for t in built.tasks),
                   "items": sum(not t.honeypot for t in built.tasks),
                   "contexts": len({t.context_id for t in built.tasks if not t.honeypot}),
                   "systems": len({s for ids in built.task_systems.values() for s in ids})},
    }
    digest = sha256_json(body)
    rest = {**body, "hash": digest, "export_id": digest[:16], "warnings": list(built.warnings)}
    return ArtifactManifest(BATCH_KIND, digest, {k: body[k] for k in ("mode", "scale", "overlap", "seed", "blind")},
                            sha256_json(body["contexts"]), versions=package_versions("repliq"), details=rest).to_json()


def key_json(built: BuiltTasks, system_ids: Mapping[str, str], export_id: str) -> dict[str, Any]:
    return {"export_id": export_id, "systems": {opaque: name for name, opaque in system_ids.items()},
            "tasks": {tid: {"systems": ids, **({"swapped": built.swapped[tid]} if tid in built.swapped else {})}
                      for tid, ids in built.task_systems.items()}}


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise LabelingError(f"{path} not found: is this the directory `repliq ssa export` wrote ({what})?")
    try:
        return loads_user_json(read_user_text(path), path)
    except UserFileError as exc:
        raise LabelingError(f"{exc.source}: line {exc.line}: damaged ({exc.reason}); restore it from the original "
                            "export") from exc


def load_export(export_dir: Path) -> ExportInfo:
    path = Path(export_dir) / MANIFEST_NAME
    obj = _read_json(path, "the export manifest")
    body = {k: v for k, v in obj.items() if k not in _UNHASHED} if isinstance(obj, dict) else {}
    check_declared(obj, BATCH_KIND, path)  # exports from before the artifact contract declare no kind
    if body.get("schema") != _SCHEMA or sha256_json(body) != obj.get("hash"):
        raise LabelingError(f"{path} was edited or is not a repliq SSA export manifest (hash mismatch); "
                            "labels can only be checked against the manifest exactly as exported")
    contexts = {cid: Context(tuple(Turn(t["speaker"], t["text"]) for t in turns))
                for cid, turns in body["contexts"].items()}
    tasks = {tid: Task.from_json(tid, body["tasks"][tid]) for tid in body["task_ids"]}
    return ExportInfo(obj["export_id"], body["mode"], body["scale"], int(body["overlap"]), int(body["seed"]),
                      body["format"], contexts, tasks)


def load_key(key_path: Path, export: ExportInfo) -> ExportKey:
    obj = _read_json(Path(key_path), "the blinding key")
    if not isinstance(obj, dict) or obj.get("export_id") != export.export_id:
        raise LabelingError(f"{key_path} belongs to export {obj.get('export_id') if isinstance(obj, dict) else '?'}, "
                            f"not {export.export_id}; pass the key written together with this export")
    tasks = obj["tasks"]
    return ExportKey(dict(obj["systems"]), {tid: list(v["systems"]) for tid, v in tasks.items()},
                     {tid: bool(v["swapped"]) for tid, v in tasks.items() if "swapped" in v})
