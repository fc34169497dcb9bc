"""Reward-model artifacts: small heads on fixed feature vectors, and the directories they are saved in.

Heads may train with torch (the MLP) but score with plain numpy matrix products: a head costs
microseconds per row, so once the embedding exists (retrieval computes it anyway) a reward is almost
free. Inputs are standardized with the training rows' mean and sd, stored with the weights.

A saved model is one directory holding ``weights.npz`` and ``manifest.json`` (a
:class:`core.artifacts.ArtifactManifest`), swapped in atomically.

The manifest records what a reward model needs to be trusted later (kind, config, data hash, package
versions, metrics) and, as its lineage, the identity of the encoder whose embeddings it reads. A head
fit on one encoder's vectors gives confident nonsense on another's, so loading checks that identity
and refuses a mismatch instead of scoring.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import ArtifactError, ArtifactManifest, check_manifest, package_versions, read_json, save_manifest
from core.atomic import atomic_directory, sha256_bytes, sha256_json

HEADS = ("ridge", "logistic", "mlp")
WEIGHTS_FILE = "weights.npz"
MANIFEST_FILE = "manifest.json"


class RewardModelError(ArtifactError):
    """A reward-model directory that cannot be used as asked; the message says what to do instead."""


def data_hash(*parts: Any) -> str:
    """Hash of the training data as JSON (texts, contexts, targets); arrays are listed first."""
    return sha256_json([p.tolist() if isinstance(p, np.ndarray) else p for p in parts])


def weights_digest(arrays: dict[str, np.ndarray]) -> str:
    """Content hash of named arrays, independent of how they were serialized."""
    blob = b"".join(name.encode() + np.ascontiguousarray(arrays[name]).tobytes() for name in sorted(arrays))
    return sha256_bytes(blob)


def save_artifact(out_dir: Path, kind: str, arrays: dict[str, np.ndarray], *, config: dict[str, Any],
                  encoder: str | None, data_sha256: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write weights and manifest into ``out_dir`` in one atomic directory swap; returns the manifest as JSON.

    ``encoder`` is the identity of the encoder whose embeddings the head reads (``None`` for heads that
    read none); it is recorded as the ``encoder`` lineage and, for older readers, as ``encoder``.
    """
    bad = [name for name, value in arrays.items() if not np.isfinite(value).all()]
    if bad:
        raise RewardModelError(f"refusing to save {kind}: arrays {bad} hold NaN or infinity (training diverged); "
                               "lower the learning rate or raise the L2 penalty and retrain")
    digest = weights_digest(arrays)
    manifest = ArtifactManifest(
        kind=kind, identity=digest, config=config, data_sha256=data_sha256, metrics=metrics,
        lineage={"encoder": encoder} if encoder is not None else {},
        versions=package_versions("numpy", "torch", "sentence-transformers", "repliq"),
        details={"encoder": encoder, "weights_sha256": digest})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # shipped heads stay small files; the identity hashes content, not bytes
    with atomic_directory(Path(out_dir)) as scratch:
        (scratch / WEIGHTS_FILE).write_bytes(buffer.getvalue())
        save_manifest(scratch / MANIFEST_FILE, manifest)
    return manifest.to_json()


def load_artifact(directory: Path, kind: str,
                  encoder: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Manifest (as JSON) and arrays of a saved reward model of ``kind``; ``encoder`` must match if given."""
    directory = Path(directory)
    try:
        manifest = read_json(directory / MANIFEST_FILE, kind)
        with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ArtifactError, OSError, ValueError) as exc:
        raise RewardModelError(f"{directory} is not a saved reward model ({exc})") from exc
    try:
        checked = check_manifest(manifest, kind, directory)
    except ArtifactError as exc:
        raise RewardModelError(str(exc)) from exc
    if weights_digest(arrays) != checked.identity:
        raise RewardModelError(f"{directory / WEIGHTS_FILE} does not match its manifest hash (edited or damaged); "
                               f"run `{checked.rebuild}` to rebuild it")
    if encoder is not None:
        check_encoder(manifest, encoder, directory)
    return manifest, arrays


def check_encoder(manifest: dict[str, Any], encoder: str, directory: Path) -> None:
    """Refuse a model whose features came from another encoder than the configured one."""
    trained = (manifest.get("lineage") or {}).get("encoder")
    if trained != encoder:
        hint = ArtifactManifest.from_json(manifest, directory).rebuild
        raise RewardModelError(
            f"{directory} was trained on embeddings of encoder {trained!r}, but the configured "
            f"encoder is {encoder!r}; its scores would be meaningless. Retrain it with `{hint}` or set "
            "encoder.name back to the encoder it was trained with"
        )


# ---- heads ---------------------------------------------------------------------------------------



@dataclass
class Head:
    kind: str
    mean: np.ndarray
    scale: np.ndarray
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W, b) pairs; ReLU between them
    info: dict[str, float] = field(default_factory=dict)  # fit facts worth reporting (e.g. the chosen L2)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = (np.asarray(features, dtype=np.float32) - self.mean) / self.scale
        for k, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if k < len(self.layers) - 1:
                np.maximum(x, 0.0, out=x)
        return x[:, 0].astype(np.float64)

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {f"{prefix}mean": self.mean, f"{prefix}scale": self.scale}
        for k, (w, b) in enumerate(self.layers):
            out[f"{prefix}w{k}"], out[f"{prefix}b{k}"] = w, b
        return out

    @classmethod
    def from_arrays(cls, kind: str, arrays: dict[str, np.ndarray], prefix: str = "") -> Head:
        layers = []
        while f"{prefix}w{len(layers)}" in arrays:
            k = len(layers)
            layers.append((arrays[f"{prefix}w{k}"].astype(np.float32), arrays[f"{prefix}b{k}"].astype(np.float32)))
        if not layers:
            raise ValueError(f"no head weights under prefix {prefix!r}; the artifact is damaged, retrain it")
        return cls(kind, arrays[f"{prefix}mean"].astype(np.float32), arrays[f"{prefix}scale"].astype(np.float32),
                   layers)


def _standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    return mean.astype(np.float32), np.where(sd > 1e-8, sd, 1.0).astype(np.float32)


RIDGE_GRID = tuple(float(10.0 ** k) for k in np.arange(-1.0, 5.01, 0.5))


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float | None = None) -> Head:
    """Closed-form ridge on standardized inputs (intercept unpenalized).

    ``l2=None`` picks the penalty from ``RIDGE_GRID`` by exact leave-one-out error, computed from one SVD
    (GCV, the usual shortcut, picks the smallest penalty whenever columns outnumber rows). The best
    penalty moves by orders of magnitude between a few hundred rows and a few thousand, and between 387
    dense columns and 4,099 sparse ones, so no fixed value suits every proxy.
    """
    mean, scale = _standardizer(x)
    x64 = np.asarray(x, dtype=np.float64)
    z = (x64 - x64.mean(axis=0)) / scale  # centred exactly, so the constant direction is exactly null
    y_mean = float(y.mean())
    target = np.asarray(y, dtype=np.float64) - y_mean
    u, sv, vt = np.linalg.svd(z, full_matrices=False)
    keep = sv > sv.max() * 1e-10  # centering leaves a null direction (the constant) that the intercept owns
    u, sv, vt = u[:, keep], sv[keep], vt[keep]
    projected = u.T @ target
    squared_u = u**2
    # Leverage left outside the columns' span and outside the intercept (0 when columns outnumber rows).
    outside = np.maximum(1.0 - 1.0 / len(target) - squared_u.sum(axis=1), 0.0)

    def loo(penalty: float) -> float:
        """Mean squared leave-one-out error; residual and 1 − leverage are both formed from the
        (1 − shrink) factors, so their ratio stays exact even as the fit approaches interpolation."""
        kept = penalty / (sv**2 + penalty)
        residual = u @ (kept * projected) + (target - u @ projected)
        complement = squared_u @ kept + outside
        return float(np.mean((residual / np.maximum(complement, 1e-12)) ** 2))

    chosen = float(l2) if l2 is not None else min(RIDGE_GRID, key=loo)
    w = vt.T @ (sv / (sv**2 + chosen) * projected)
    head = Head("ridge", mean, scale, [(w[:, None].astype(np.float32), np.array([y_mean], dtype=np.float32))])
    head.info = {"l2": chosen}
    return head


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, sample_weight: np.ndarray | None = None) -> Head:
    """L2-penalized logistic regression on standardized inputs; the head outputs logits."""
    from scipy.optimize import minimize

    mean, scale = _standardizer(x)
    z = np.hstack([((x - mean) / scale).astype(np.float64), np.ones((len(x), 1))])
    labels = np.asarray(y, dtype=np.float64)
    weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weight = weight / weight.sum()
    penalty = np.r_[np.full(z.shape[1] - 1, l2 / len(y)), 0.0]

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        margin = z @ w
        loss = float(weight @ (np.logaddexp(0.0, margin) - labels * margin) + 0.5 * penalty @ (w * w))
        grad = z.T @ (weight * (1.0 / (1.0 + np.exp(-margin)) - labels)) + penalty * w
        return loss, grad

    w = minimize(objective, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
    return Head("logistic", mean, scale, [(w[:-1, None].astype(np.float32), np.array([w[-1]], dtype=np.float32))])


def fit_mlp(x: np.ndarray, y: np.ndarray, *, hidden: int = 256, epochs: int = 200, lr: float = 1e-3,
            weight_decay: float = 1e-4, dropout: float = 0.1, batch_size: int = 256, seed: int = 0,
            loss: str = "mse", sample_weight: np.ndarray | None = None, patience: int = 20) -> Head:
    """One hidden ReLU layer trained with Adam; 10% of rows are held out for early stopping.

    ``loss="mse"`` regresses ``y``; ``loss="logistic"`` treats ``y`` as 0/1 labels and outputs logits.
    """
    import torch

    if loss not in ("mse", "logistic"):
        raise ValueError(f"loss must be 'mse' or 'logistic', got {loss!r}")
    mean, scale = _standardizer(x)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    z = torch.from_numpy(((x - mean) / scale).astype(np.float32))
    target = torch.from_numpy(np.asarray(y, dtype=np.float32))
    weight = torch.from_numpy(np.ones(len(y), np.float32) if sample_weight is None
                              else np.asarray(sample_weight, np.float32))
    y_mean, y_sd = (float(target.mean()), float(target.std()) or 1.0) if loss == "mse" else (0.0, 1.0)
    order = torch.randperm(len(z), generator=generator)
    n_val = max(1, len(z) // 10)
    val, train = order[:n_val], order[n_val:]
    model = torch.nn.Sequential(torch.nn.Linear(z.shape[1], hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                                torch.nn.Linear(hidden, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def criterion(pred: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if loss == "mse":
            per_row = (pred - (target[rows] - y_mean) / y_sd) ** 2
        else:
            per_row = torch.nn.functional.binary_cross_entropy_with_logits(pred, target[rows], reduction="none")
        return (per_row * weight[rows]).sum() / weight[rows].sum()

    best, best_state, waited = float("inf"), None, 0
    for _ in range(epochs):
        model.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), batch_size):
            rows = shuffled[start:start + batch_size]
            optimizer.zero_grad()
            criterion(model(z[rows])[:, 0], rows).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            current = float(criterion(model(z[val])[:, 0], val))
        if current < best - 1e-5:
            best, waited = current, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    first, last = model[0], model[3]
    layers = [(first.weight.detach().numpy().T.copy(), first.bias.detach().numpy().copy()),
              ((last.weight.detach().numpy().T * y_sd).astype(np.float32),
               (last.bias.detach().numpy() * y_sd + y_mean).astype(np.float32))]
    return Head("mlp", mean, scale, layers)


def fit_head(kind: str, x: np.ndarray, y: np.ndarray, seed: int = 0, sample_weight: np.ndarray | None = None,
             **options: Any) -> Head:
    """``ridge`` regresses; ``logistic`` classifies 0/1 labels (logits out); ``mlp`` does either (``loss``)."""
    if kind == "ridge":
        if sample_weight is not None:
            raise ValueError("the ridge head takes no sample weights; use the mlp head")
        l2 = options.get("l2")
        return fit_ridge(x, y, None if l2 is None else float(l2))
    if kind == "logistic":
        return fit_logistic(x, y, float(options.get("l2", 1.0)), sample_weight)
    if kind == "mlp":
        return fit_mlp(x, y, seed=seed, sample_weight=sample_weight, **options)
    raise ValueError(f"unknown head {kind!r}; use one of {', '.join(HEADS)}")
