"""The labeling workflow: export tasks for raters, import their answers, export preferences for RL.

What ``repliq ssa ...`` calls; each function raises ``LabelingError`` (a ``ValueError``) whose message
lists every bad row, and none of them leaves a half-written result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.atomic import atomic_directory, atomic_write_json, sha256_file
from core.types import Context
from dialog.labeling.formats import UPLOAD_FILES, check_format, read_answers, write_upload
from dialog.labeling.report import Analysis, analyze
from dialog.labeling.store import LabelStore, validate_answers
from dialog.labeling.tasks import (
    BINARY,
    FIVE_POINT,
    KEY_NAME,
    MANIFEST_NAME,
    PAIRWISE,
    POINTWISE,
    Honeypot,
    LabelingError,
    RowProblem,
    build_tasks,
    key_json,
    load_export,
    manifest_json,
    opaque_system_ids,
    read_contexts,
    read_honeypots,
)
from rl.preference import PreferencePair, pair_to_json, write_preferences

Responder = Callable[[Context], str]
UPLOAD_DIR = "upload"


def _collect_responses(contexts: Mapping[str, Context], systems: Mapping[str, Responder]) -> dict[str, dict[str, str]]:
    problems = []
    responses: dict[str, dict[str, str]] = {}
    for cid, context in contexts.items():
        responses[cid] = {}
        for name, respond in systems.items():
            try:
                reply = respond(context)
            except Exception as exc:  # a failing system is reported with its context, not as a crash
                problems.append(RowProblem(f"system {name}", f"context {cid}", f"raised {exc!r}"))
                continue
            if not isinstance(reply, str) or not reply.strip():
                problems.append(RowProblem(f"system {name}", f"context {cid}", f"gave {reply!r}, not a reply"))
                continue
            responses[cid][name] = reply.strip()
    if problems:
        raise LabelingError("some systems could not answer; fix them (or drop those contexts) and export again",
                            problems)
    return responses


def _export(mode: str, contexts: Mapping[str, Context] | Path, systems: Mapping[str, Responder], out_dir: Path,
            fmt: str, overlap: int, honeypot_rate: float, honeypots: Sequence[Honeypot] | Path | None,
            blind: bool, seed: int, scale: str | None, key_path: Path | None) -> dict[str, Any]:
    check_format(fmt)
    out_dir = Path(out_dir)
    if not isinstance(contexts, Mapping):
        contexts = read_contexts(Path(contexts))
    if isinstance(honeypots, str | Path):
        honeypots = read_honeypots(Path(honeypots))
    if overlap < 1:
        raise LabelingError(f"overlap {overlap} must be >= 1 (raters per task; 5 is usual for SSA)")
    if not contexts:
        raise LabelingError("no contexts to export")
    bad_names = [n for n in systems if not n.strip() or "," in n]
    if not systems or bad_names:
        raise LabelingError(f"system names must be non-empty and comma-free; got {list(systems)}")
    if mode == PAIRWISE and len(systems) < 2:
        raise LabelingError("pairwise export needs at least two systems (--system NAME=CONFIG twice or more)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise LabelingError(f"{out_dir} exists and is not empty; pick a new --out directory (exports are never "
                            "overwritten, labels refer to them)")
    system_ids = opaque_system_ids(list(systems), seed, blind)
    built = build_tasks(contexts, _collect_responses(contexts, systems), mode, list(honeypots or []),
                        honeypot_rate, seed, system_ids)
    manifest = manifest_json(built, mode, scale, overlap, seed, fmt, blind, honeypot_rate)
    key = key_json(built, system_ids, manifest["export_id"])
    write_export(out_dir, key_path, built, manifest, key, fmt=fmt, mode=mode, scale=scale, overlap=overlap,
                 blind=blind)
    return {"export_id": manifest["export_id"], "out_dir": str(out_dir), "counts": manifest["counts"],
            "key_path": str(key_path or out_dir / KEY_NAME), "upload": sorted(manifest["files"]),
            "warnings": manifest["warnings"]}


def export_pointwise(contexts: Mapping[str, Context] | Path, systems: Mapping[str, Responder], out_dir: Path,
                     fmt: str = "jsonl", overlap: int = 5, honeypot_rate: float = 0.1,
                     honeypots: Sequence[Honeypot] | Path | None = None, blind: bool = True, seed: int = 0,
                     key_path: Path | None = None) -> dict[str, Any]:
    """One task per (context, distinct reply): "Sensible?" then, if yes, "Specific?".

    Writes ``out_dir/upload/`` (what goes to the platform), ``manifest.json`` (checked on import) and
    the blinding key (``out_dir/key.json`` unless ``key_path``); keep the key away from raters.
    """
    return _export(POINTWISE, contexts, systems, out_dir, fmt, overlap, honeypot_rate, honeypots, blind, seed,
                   None, key_path)


def export_pairwise(contexts: Mapping[str, Context] | Path, systems: Mapping[str, Responder], out_dir: Path,
                    fmt: str = "jsonl", overlap: int = 5, honeypot_rate: float = 0.1,
                    honeypots: Sequence[Honeypot] | Path | None = None, blind: bool = True, seed: int = 0,
                    scale: str = FIVE_POINT, key_path: Path | None = None) -> dict[str, Any]:
    """A/B tasks for every pair of systems per context; sides are random and recorded in the key."""
    if scale not in (FIVE_POINT, BINARY):
        raise LabelingError(f"unknown scale {scale!r}; use {FIVE_POINT!r} or {BINARY!r}")
    return _export(PAIRWISE, contexts, systems, out_dir, fmt, overlap, honeypot_rate, honeypots, blind, seed,
                   scale, key_path)


def import_labels(export_dir: Path, answers_path: Path, fmt: str, store: LabelStore | None = None,
                  rater_field: str | None = None) -> dict[str, Any]:
    """Validate every answer against the export, then store all of them in one transaction (or none)."""
    export = load_export(Path(export_dir))
    own_store = store is None
    store = store or LabelStore()
    try:
        raw, problems, skipped = read_answers(Path(answers_path), fmt, rater_field)
        labels, invalid = validate_answers(raw, export, Path(answers_path).name, store.answered(export.export_id))
        problems = sorted(problems + invalid, key=lambda p: _row_order(p.where))
        if problems:
            raise LabelingError(f"nothing imported: {len(problems)} bad row(s) in {answers_path}; fix them and "
                                "import the whole file again", problems)
        if not labels:
            raise LabelingError(f"{answers_path} holds no answers to import ({skipped} cancelled/rejected)")
        import_id = store.add(labels, export.export_id, str(answers_path), sha256_file(Path(answers_path)), fmt)
        return {"export_id": export.export_id, "import_id": import_id, "imported": len(labels),
                "skipped": skipped, "raters": len({lb.rater for lb in labels}),
                "total_for_export": store.count(export.export_id)}
    finally:
        if own_store:
            store.close()


def _row_order(where: str) -> tuple[int, str]:
    digits = "".join(ch if ch.isdigit() else " " for ch in where).split()
    return (int(digits[0]) if digits else 0, where)


def export_preferences(store: LabelStore, export_dir: Path, key_path: Path | None, out_path: Path,
                       method: str = "majority", min_honeypot_accuracy: float = 0.7) -> dict[str, Any]:
    """(context, chosen, rejected, weight) JSONL for ``rl.preference`` from the screened, aggregated labels.

    Pairwise: the aggregated side wins, weight = strength of the preference (0..1]. Pointwise: a reply
    beats another system's reply to the same context when its item SSA is higher, weight = the gap.
    """
    analysis = analyze(store, Path(export_dir), key_path, method, min_honeypot_accuracy)
    replies: dict[str, dict[str, str]] = {}
    for tid, task in analysis.export.tasks.items():
        if not task.honeypot:
            replies.setdefault(task.context_id, {}).update(_named_replies(analysis, tid))
    rows = []
    for cid, winner, loser, weight in analysis.outcomes():
        if weight <= 0:
            continue
        context = analysis.export.contexts[cid]
        pair = PreferencePair(context, replies[cid][winner], replies[cid][loser], round(weight, 6))
        rows.append(pair_to_json(pair, context_id=cid, chosen_system=winner, rejected_system=loser,
                                 source=analysis.export.mode, export_id=analysis.export.export_id))
    if not rows:
        raise LabelingError("no preferences: every comparison is a tie or unlabelled; nothing written")
    write_preferences(Path(out_path), rows)
    return {"pairs": len(rows), "out_path": str(out_path), "source": analysis.export.mode}


def _named_replies(analysis: Analysis, task_id: str) -> list[tuple[str, str]]:
    task, names = analysis.export.tasks[task_id], analysis.key.names(task_id)
    if analysis.export.mode == POINTWISE:
        return [(name, task.responses[0]) for name in names]
    return list(zip(names, task.responses, strict=True))


def write_export(out_dir: Path, key_path: Path | None, built: Any, manifest: dict[str, Any], key: dict[str, Any], *,
                 fmt: str, mode: str, scale: int | None, overlap: int, blind: bool,
                 extra: dict[str, dict[str, Any]] | None = None) -> None:
    """The upload files, the hashed manifest, the blinding key (beside it unless ``key_path``) and any ``extra``
    JSON files, written as one directory: raters never see half an export."""
    visible = None if blind else {tid: [key["systems"][s] for s in ids] for tid, ids in built.task_systems.items()}
    if key_path is not None:
        atomic_write_json(Path(key_path), key)
    with atomic_directory(out_dir) as scratch:
        write_upload(scratch / UPLOAD_DIR, fmt, built.tasks, built.contexts, mode, scale, overlap, visible)
        manifest["files"] = {f"{UPLOAD_DIR}/{name}": sha256_file(scratch / UPLOAD_DIR / name)
                             for name in UPLOAD_FILES[fmt]}
        atomic_write_json(scratch / MANIFEST_NAME, manifest)
        for name, obj in (extra or {}).items():
            atomic_write_json(scratch / name, obj)
        if key_path is None:
            atomic_write_json(scratch / KEY_NAME, key)
