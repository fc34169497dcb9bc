"""Rater tasks from served traffic: `repliq ssa export --from-logs`.

Decisions are sampled per stratum (language x serving policy, the policy being the exploration policy
and the ranker version), so a rare language or a policy that served little traffic is still labeled.
Each sampled turn becomes a pointwise task whose context id is the decision's request id: imported
labels then join back to the decision (and to its propensities, for off-policy evaluation) by request id.
The system behind a task is the serving policy, blinded like any system; honeypots, formats, the
manifest and the key are those of ``repliq ssa export``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.types import Context, Turn
from dialog.labeling.formats import check_format
from dialog.labeling.tasks import (
    KEY_NAME,
    POINTWISE,
    Honeypot,
    LabelingError,
    RowProblem,
    build_tasks,
    key_json,
    manifest_json,
    opaque_system_ids,
    read_honeypots,
)
from dialog.labeling.workflow import write_export
from rl.decision_records import policy_id, read_decisions

SAMPLING_NAME = "sampling.json"
UPLOAD_DIR = "upload"


def _context(record: dict[str, Any]) -> Context | None:
    turns = record.get("context")
    if not isinstance(turns, list) or not turns:
        return None
    try:
        parsed = tuple(Turn(str(t["speaker"]), str(t["text"])) for t in turns)
    except (KeyError, TypeError):
        return None
    return Context(parsed) if all(t.text.strip() for t in parsed) else None


def sample_strata(records: Sequence[dict[str, Any]], per_stratum: int, seed: int) -> dict[tuple[str, str], list[dict]]:
    """Up to ``per_stratum`` decisions of each (language, policy), drawn without replacement, one per request."""
    by_stratum: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for record in records:
        by_stratum[(record["language"], policy_id(record))].setdefault(record["request_id"], record)
    rng = random.Random(f"{seed}:from-logs")
    sampled = {}
    for stratum in sorted(by_stratum):
        pool = [by_stratum[stratum][rid] for rid in sorted(by_stratum[stratum])]
        sampled[stratum] = rng.sample(pool, min(per_stratum, len(pool)))
    return sampled


def export_from_logs(logs: Path, out_dir: Path, *, per_stratum: int = 100, fmt: str = "jsonl", overlap: int = 5,
                     honeypot_rate: float = 0.1, honeypots: Sequence[Honeypot] | Path | None = None,
                     blind: bool = True, seed: int = 0, key_path: Path | None = None) -> dict[str, Any]:
    """Sample served turns into a pointwise SSA export; returns its summary with the per-stratum counts."""
    check_format(fmt)
    out_dir = Path(out_dir)
    if per_stratum < 1 or overlap < 1:
        raise LabelingError(f"--per-stratum ({per_stratum}) and --overlap ({overlap}) must be at least 1")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise LabelingError(f"{out_dir} exists and is not empty; pick a new --out directory")
    if isinstance(honeypots, str | Path):
        honeypots = read_honeypots(Path(honeypots))
    records, problems = read_decisions(Path(logs))
    with_text = [r for r in records if _context(r) is not None]
    if not with_text:
        raise LabelingError(f"none of the {len(records)} decisions in {logs} carries its context text: they were "
                            "logged with [logging] log_user_text = false; raters need the text, so turn it on "
                            "(where users agreed to it) and collect new logs",
                            [RowProblem(f, f"line {n}", why) for f, n, why in problems])
    strata = sample_strata(with_text, per_stratum, seed)
    contexts: dict[str, Context] = {}
    responses: dict[str, dict[str, str]] = {}
    for (_, policy), chosen in strata.items():
        for record in chosen:
            rid = record["request_id"]
            contexts[rid] = _context(record)  # type: ignore[assignment]
            responses[rid] = {policy: record["candidates"][record["chosen"]]["text"]}
    system_ids = opaque_system_ids(sorted({p for _, p in strata}), seed, blind)
    built = build_tasks(contexts, responses, POINTWISE, list(honeypots or []), honeypot_rate, seed, system_ids)
    manifest = manifest_json(built, POINTWISE, None, overlap, seed, fmt, blind, honeypot_rate)
    key = key_json(built, system_ids, manifest["export_id"])
    sampling = {"export_id": manifest["export_id"], "logs": str(logs), "per_stratum": per_stratum,
                "decisions_read": len(records), "without_text": len(records) - len(with_text),
                "skipped_lines": len(problems), "skipped_examples": [list(p) for p in problems[:20]],
                "strata": [{"language": lang, "policy": policy, "sampled": len(chosen),
                            "request_ids": [r["request_id"] for r in chosen]}
                           for (lang, policy), chosen in strata.items()]}
    write_export(out_dir, key_path, built, manifest, key, fmt=fmt, mode=POINTWISE, scale=None, overlap=overlap,
                 blind=blind, extra={SAMPLING_NAME: sampling})
    return {"export_id": manifest["export_id"], "out_dir": str(out_dir), "counts": manifest["counts"],
            "strata": [{k: v for k, v in s.items() if k != "request_ids"} for s in sampling["strata"]],
            "skipped_lines": len(problems), "without_text": sampling["without_text"],
            "key_path": str(key_path or out_dir / KEY_NAME), "upload": sorted(manifest["files"]),
            "warnings": manifest["warnings"]}


def ssa_rewards(store: Any, export_dir: Path, key_path: Path | None = None, method: str = "majority",
                min_honeypot_accuracy: float = 0.7) -> dict[str, float]:
    """Request id -> SSA of the served reply ((sensible + specific) / 2) from labels of a --from-logs export."""
    from dialog.labeling.report import analyze

    if not (Path(export_dir) / SAMPLING_NAME).is_file():
        raise LabelingError(f"{export_dir} was not exported with --from-logs (no {SAMPLING_NAME}); its context ids "
                            "are not request ids, so its labels cannot be joined to decisions")
    analysis = analyze(store, Path(export_dir), key_path, method, min_honeypot_accuracy)
    rewards: dict[str, float] = {}
    for task_id, (sensible, specific) in analysis.items.items():
        rewards[analysis.export.tasks[task_id].context_id] = (sensible + specific) / 2.0
    return rewards
