"""A resumable training run's checkpoint: trainable weights, optimizer, scheduler and RNG, written atomically.

Every torch trainer (retriever fine-tuning, the sensibleness judge) resumes the same way: the checkpoint
folder is swapped in whole (a kill mid-write leaves the previous one), and it is refused when it belongs
to another run (other config, data or base model) instead of silently mixing two runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.atomic import atomic_directory, atomic_write_json

CHECKPOINT = "checkpoint"


def save_checkpoint(work_dir: Path, weights: dict[str, Any], optimizer: Any, scheduler: Any,
                    state: dict[str, Any]) -> None:
    """Write ``weights`` (name -> tensor, detached copies), optimizer, scheduler, torch RNG and ``state``."""
    import torch

    with atomic_directory(Path(work_dir) / CHECKPOINT) as scratch:
        torch.save({"weights": weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, scratch / "state.pt")
        atomic_write_json(scratch / "state.json", state)


def load_checkpoint(work_dir: Path, run: dict[str, Any], optimizer: Any, scheduler: Any,
                    mismatch: type[Exception], what: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(state, saved weights) of ``run``'s checkpoint with optimizer, scheduler and RNG restored; None without one.

    A checkpoint of another run raises ``mismatch`` naming the folder; the caller copies the weights back.
    """
    import torch

    folder = Path(work_dir) / CHECKPOINT
    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if state.get("run") != run:
        raise mismatch(f"{folder} is a checkpoint of another {what} run (other config, data or base model); "
                       "delete it, use another work directory, or start over with resume=False")
    saved = torch.load(folder / "state.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return state, saved["weights"]
