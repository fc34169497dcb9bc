"""The bi-encoder on ONNX Runtime: the same vectors as :class:`retriever.encoder.Encoder`, faster on a CPU.

An export lives in ``<model dir>/onnx/`` beside the weights it was made from, with a manifest
(:data:`EXPORT_MANIFEST`) that records the source weights' hash, every file's sha256, the tokenizer
settings and the fidelity gate measured by ``repliq models prepare``. This encoder's ``identity`` is
the *source* model's: an index or blender built with torch stays valid when served through ONNX,
because the gate (cosine >= 0.995 to torch, retrieval within 0.5 points per language) is what makes the
two interchangeable, and an export that failed it is never chosen automatically.

Nothing here imports torch: serving on ONNX loads neither torch nor sentence-transformers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import sha256_file
from core.models.manifest import MANIFEST_NAME, ModelManifest
from retriever.encoder_base import ManifestEncoder

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
EXPORT_MANIFEST = "repliq_onnx.json"
EXPORT_FORMAT = 1
VARIANTS = ("int8", "fp32")

Progress = Callable[[int, int], None]


class OnnxExportError(RuntimeError):
    """An ONNX export that cannot be used (missing, stale or damaged); the message names the fix."""


def rebuild_command(model_dir: Path) -> str:
    """The command that rebuilds the export of ``model_dir`` (a cache name when it lives in the cache)."""
    return f"repliq models prepare {Path(model_dir).name if _in_cache(model_dir) else Path(model_dir)}"


def _in_cache(model_dir: Path) -> bool:
    from core.config import default_models_dir

    return Path(model_dir).resolve().parent == default_models_dir().resolve()


def source_manifest(model_dir: Path) -> ModelManifest:
    if (Path(model_dir) / MANIFEST_NAME).exists():
        return ModelManifest.load(model_dir)
    from core.models.cache import describe_local_dir

    return describe_local_dir(Path(model_dir))


def read_export(model_dir: Path, export_dir: Path | None = None) -> dict[str, Any] | None:
    """The export manifest of ``model_dir`` (in ``export_dir`` when given), or ``None`` when there is none."""
    path = Path(export_dir or Path(model_dir) / ONNX_DIR) / EXPORT_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OnnxExportError(f"{path} is unreadable ({exc}); rebuild it with `{rebuild_command(model_dir)}`") from exc
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise OnnxExportError(f"{path} is not a format-{EXPORT_FORMAT} export manifest; "
                              f"rebuild it with `{rebuild_command(model_dir)}`")
    return data


def stale_reason(model_dir: Path, export: dict[str, Any]) -> str | None:
    """Why the export no longer matches the weights beside it, or ``None`` when it does."""
    source = source_manifest(model_dir)
    recorded = export.get("source_weights_sha256")
    if recorded != source.weights_sha256:
        return (f"the ONNX export of {model_dir} was made from weights {str(recorded)[:12]}…, but the model now has "
                f"{source.weights_sha256[:12]}…")
    return None


def verified_file(model_dir: Path, export: dict[str, Any], variant: str, export_dir: Path | None = None) -> Path:
    """The variant's ONNX file after checking it is the file the export recorded (size, then sha256)."""
    entry = (export.get("variants") or {}).get(variant)
    if not isinstance(entry, dict) or "file" not in entry:
        raise OnnxExportError(f"the ONNX export of {model_dir} has no {variant} model; "
                              f"rebuild it with `{rebuild_command(model_dir)}`")
    path = Path(export_dir or Path(model_dir) / ONNX_DIR) / str(entry["file"])
    if not path.is_file():
        raise OnnxExportError(f"{path} is missing; rebuild it with `{rebuild_command(model_dir)}`")
    size = path.stat().st_size
    if size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        raise OnnxExportError(f"{path} is corrupt or truncated ({size} bytes, expected {entry.get('bytes')}, or its "
                              f"sha256 differs from the export manifest); rebuild it with "
                              f"`{rebuild_command(model_dir)}`")
    return path


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxEncoder(ManifestEncoder):
    """Encodes queries and passages into float32, L2-normalized rows with an ONNX Runtime session.

    ``variant`` is ``int8`` or ``fp32``, or ``selected`` for the one the fidelity gate chose. The
    session runs with ``num_threads`` intra-op threads (0: ONNX Runtime's default, one per core) and
    without spin-waiting, so idle threads do not steal a shared machine's cores. Tokenization is
    serialized (a fast tokenizer must not be used from two threads at once); ``session.run`` is not.
    """

    def __init__(self, model_dir: Path | str, variant: str = "selected", batch_size: int = 64,
                 num_threads: int = 0, *, export_dir: Path | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"encoder batch_size must be positive, got {batch_size}")
        self.model_dir = Path(model_dir)
        self._manifest = source_manifest(self.model_dir)
        if self._manifest.kind != "encoder":
            raise ValueError(f"{self.model_dir} holds a {self._manifest.kind!r} model, not an encoder")
        export = read_export(self.model_dir, export_dir)
        if export is None:
            raise OnnxExportError(f"{self.model_dir} has no ONNX export; make one with "
                                  f"`{rebuild_command(self.model_dir)}` or set [encoder] backend = \"torch\"")
        reason = stale_reason(self.model_dir, export)
        if reason:
            raise OnnxExportError(f"{reason}; rebuild it with `{rebuild_command(self.model_dir)}`")
        if variant == "selected":
            variant = export.get("selected") or "fp32"
        if variant not in VARIANTS:
            raise ValueError(f"ONNX variant must be one of {', '.join(VARIANTS)} or 'selected', got {variant!r}")
        self.variant, self.batch_size, self.export = variant, batch_size, export
        self.device = "cpu"
        path = verified_file(self.model_dir, export, variant, export_dir)
        self._session = _session(path, num_threads, self.model_dir)
        self._tokenizer = _tokenizer(self.model_dir, export)
        self._max_length = int(export["tokenizer"]["max_seq_length"])
        self._lowercase = bool(export["tokenizer"].get("do_lower_case"))
        self._dim = int(export["dim"])
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return f"onnx-{self.variant}"

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids and attention mask exactly as sentence-transformers would feed the model."""
        prepared = [text.strip().lower() if self._lowercase else text.strip() for text in texts]
        with self._lock:
            batch = self._tokenizer(prepared, padding=True, truncation="longest_first", max_length=self._max_length,
                                    return_tensors="np")
        return {"input_ids": batch["input_ids"].astype(np.int64),
                "attention_mask": batch["attention_mask"].astype(np.int64)}

    def _encode(self, texts: Sequence[str], prefix: str, progress: Progress | None) -> np.ndarray:
        prefixed = self.prefixed(texts, prefix)
        out = np.empty((len(prefixed), self._dim), dtype=np.float32)
        # Length-sorted batches waste little on padding; masked positions never change a row's vector.
        order = sorted(range(len(prefixed)), key=lambda i: len(prefixed[i]))
        for done, start in enumerate(range(0, len(order), self.batch_size), start=1):
            rows = order[start:start + self.batch_size]
            feeds = self.tokenize([prefixed[i] for i in rows])
            out[rows] = self._session.run(["sentence_embedding"], feeds)[0]
            if progress:
                progress(min(done * self.batch_size, len(order)), len(order))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def _session(path: Path, num_threads: int, model_dir: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(int(num_threads), 0)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
        raise OnnxExportError(f"{path} cannot be loaded by ONNX Runtime ({str(exc)[:200]}); rebuild it with "
                              f"`{rebuild_command(model_dir)}`") from exc


def _tokenizer(model_dir: Path, export: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    folder = Path(model_dir) / str(export["tokenizer"].get("path") or "")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


BACKENDS = ("auto", "onnx", "torch")
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def choose_backend(requested: str, model_dir: Path, device: str) -> str:
    """``onnx`` or ``torch`` for ``[encoder] backend = requested`` on ``model_dir``.

    ``auto`` takes ONNX only when a current export exists whose fidelity gate passed (its manifest has a
    ``selected`` variant) and the device is the CPU; otherwise torch, which is never wrong, only slower.
    ``onnx`` insists: a missing or stale export is an error naming the command that builds it. Both fall
    back to torch, with one warning per process, when ``onnxruntime`` cannot be imported. A damaged export
    file is refused later, at load, in both modes (a server must not start half-working).
    """
    if requested not in BACKENDS:
        raise ValueError(f"[encoder] backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "torch" or (requested == "auto" and device not in ("cpu", "auto")):
        return "torch"
    export = read_export(model_dir)
    if requested == "auto" and (export is None or not export.get("selected")):
        return "torch"
    if not onnxruntime_available():
        _warn_once("onnxruntime", "onnxruntime cannot be imported, so the encoder runs on torch (slower on a CPU); "
                   "reinstall it with `pip install onnxruntime` to use the ONNX export")
        return "torch"
    if export is None:
        raise OnnxExportError(f"[encoder] backend = \"onnx\" but {model_dir} has no ONNX export; make one with "
                              f"`{rebuild_command(model_dir)}`")
    reason = stale_reason(model_dir, export)
    if reason and requested == "auto":
        _warn_once(f"stale:{model_dir}", f"{reason}; encoding with torch until `{rebuild_command(model_dir)}` "
                   "rebuilds the export")
        return "torch"
    if reason:
        raise OnnxExportError(f"{reason}; rebuild it with `{rebuild_command(model_dir)}`")
    if not export.get("selected"):
        _warn_once(f"gate:{model_dir}", f"the ONNX export of {model_dir} did not pass the fidelity gate "
                   f"({'; '.join(export.get('warnings') or []) or 'see its manifest'}); using its fp32 model "
                   "because [encoder] backend = \"onnx\" asks for it")
    return "onnx"
