"""e5-small on ONNX Runtime: the export `repliq models prepare` makes, its recorded fidelity gate, and
vectors on texts the gate never saw. The export lives in the machine-wide model cache, so the suite pays
for it once per machine (later runs find it current and reuse it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.real

RUSSIAN = Path("ru") / "koziev_anekdot_dialogues.tar.xz"
FRESH = ["Как ты относишься к джазу?", "What did you cook for dinner yesterday?",
         "Мне кажется, завтра будет дождь.", "I have never been to the mountains, have you?"]


@pytest.fixture(scope="module")
def e5_export(models_dir: Path, shared_data: Path) -> dict[str, Any]:
    from core.models.cache import prepare
    from dialog.jobs.export_onnx import GateData, export_encoders
    from retriever.onnx_encoder import read_export

    prepare(["e5-small"], models_dir)
    data = GateData(russian=shared_data / RUSSIAN, topicalchat=shared_data / "topicalchat_valid")
    [row] = export_encoders(models_dir, ["e5-small"], data, say=lambda _m: None)
    export = read_export(Path(row["path"]))
    assert export is not None and row["selected"] == export["selected"]
    return export


def test_gate_values_are_recorded_and_consistent(e5_export: dict[str, Any]) -> None:
    thresholds = e5_export["thresholds"]
    assert thresholds["min_mean_cosine"] == 0.995 and thresholds["max_recall_drop_points"] == 0.5
    assert set(thresholds["languages"]) == {"en", "ru"}
    for variant in ("fp32", "int8"):
        gate = e5_export["variants"][variant]["gate"]
        assert gate["probe_texts"] >= 300
        assert set(gate["retrieval"]) == {"en", "ru"}
        for row in gate["retrieval"].values():
            assert row["n"] >= 300 and 0.1 < row["torch"] <= 1.0  # torch itself is well above chance (0.1)
        holds = gate["mean_cosine"] >= 0.995 and all(r["drop_points"] <= 0.5 for r in gate["retrieval"].values())
        assert gate["passed"] == holds, gate
    # The fp32 export is the torch model itself: anything short of near-identity is an export bug.
    assert e5_export["variants"]["fp32"]["gate"]["mean_cosine"] > 0.9999
    selected = e5_export["selected"]
    assert selected is not None, e5_export["warnings"]
    assert e5_export["variants"][selected]["gate"]["passed"]


def test_selected_onnx_variant_agrees_with_torch_on_fresh_texts(e5_export: dict[str, Any], models_dir: Path) -> None:
    from retriever.encoder import Encoder
    from retriever.onnx_encoder import OnnxEncoder

    torch_encoder = Encoder(models_dir / "e5-small", device="cpu")
    onnx_encoder = OnnxEncoder(models_dir / "e5-small")
    assert onnx_encoder.variant == e5_export["selected"] and onnx_encoder.identity == torch_encoder.identity
    for encode in ("encode_queries", "encode_passages"):
        cosines = np.sum(getattr(onnx_encoder, encode)(FRESH) * getattr(torch_encoder, encode)(FRESH), axis=1)
        assert cosines.min() > 0.98 and cosines.mean() > 0.99, cosines
    # Retrieval order on a toy bank: both backends rank the bank the same way for every query.
    bank = ["Джаз люблю, особенно старый.", "I made pasta with tomatoes.", "Да, обещали ливень.",
            "No, I have never been to the mountains; I prefer the sea."]
    orders = [np.argsort(-(encoder.encode_queries(FRESH) @ encoder.encode_passages(bank).T), axis=1).tolist()
              for encoder in (torch_encoder, onnx_encoder)]
    assert orders[0] == orders[1]
    assert [row[0] for row in orders[0]] == [0, 1, 2, 3]
