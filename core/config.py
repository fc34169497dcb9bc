"""Configuration as plain dataclasses, read from TOML and overridden by environment variables.

Precedence (lowest to highest): defaults, ``$REPLIQ_HOME/config.toml`` (or ``--config``),
``REPLIQ_<SECTION>_<KEY>`` environment variables, explicit CLI flags.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from core.job_configs import TrainingConfigs


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


def default_home() -> Path:
    return Path(os.environ.get("REPLIQ_HOME", ".repliq")).expanduser()


def default_models_dir() -> Path:
    if "REPLIQ_MODELS" in os.environ:
        return Path(os.environ["REPLIQ_MODELS"]).expanduser()
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_root / "repliq" / "models"



@dataclass
class EncoderConfig:
    # A model-cache name ("e5-small", "minilm") or a path to any sentence-transformers directory.
    name: str = "e5-small"
    batch_size: int = 64
    # "auto" picks cuda when present, else cpu.
    device: str = "auto"
    # intra-op threads for encoding (torch or ONNX Runtime); 0 leaves the runtime's default.
    num_threads: int = 0
    # "auto": ONNX Runtime when `repliq models prepare` left an export that passed its fidelity gate (CPU
    # only), else torch; "onnx" insists on the export; "torch" always (training and GPU use torch).
    backend: str = "auto"
    # Response-tuned query adapter (`repliq train adapter`): "auto" uses the workspace's, else the one
    # shipped with repliq, when trained on this encoder; "none" serves the plain encoder; or a directory.
    adapter: str = "auto"


@dataclass
class RetrievalConfig:
    context_turns: int = 3
    top_k: int = 5
    pool_k: int = 50
    # Banks above this many phrases per language get an HNSW index instead of exact search.
    flat_max: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 256
    # Banks above this many phrases per language get a compressed index (retriever/ivf.py: IVF-PQ plus a
    # refine stage, ~0.5 KB per 384-d phrase instead of HNSW's ~1.7 KB); docs/scaling.md.
    ivf_min: int = 1_000_000
    # At build, nprobe and the refine k-factor are raised until recall@10 on held-out bank vectors reaches this.
    ivf_recall_target: float = 0.95
    # 0 = auto: nlist about 2·sqrt(n) (a power of two), m = dim / 2 four-bit codes per vector.
    ivf_nlist: int = 0
    ivf_pq_m: int = 0
    # Re-scoring stage over the PQ shortlist: "sq8" (dim bytes per vector), "fp16" or "flat" (fp32).
    ivf_refine: str = "sq8"
    # Held-out bank vectors used as queries when tuning nprobe and the k-factor.
    ivf_tune_queries: int = 1000


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    # Requests that run the pipeline at once; 0 = one per usable core, at least 2. More than the cores only
    # slows every admitted request (16 on 2 cores measured accepted p99 at 12.7x the unloaded p99 under 4x
    # overload, against 1.5x with 2; docs/reliability.md) while the queue and shedding absorb the excess.
    max_workers: int = 0
    max_message_bytes: int = 1 << 20
    max_turns: int = 64
    max_turn_chars: int = 4000
    max_top_k: int = 100
    # Default deadline applied when the client sends none.
    default_timeout_s: float = 10.0
    # Seconds SIGTERM waits for requests in flight.
    drain_grace_s: float = 30.0
    # Micro-batching of encoder calls across concurrent requests.
    microbatch: bool = True
    microbatch_max_size: int = 64
    microbatch_wait_ms: float = 2.0
    # Requests that wait for one of the max_workers slots; when these are full too, a new request gets
    # RESOURCE_EXHAUSTED at once instead of a growing wait (dialog/serving/admission.py).
    max_queue: int = 16
    # Also refused at once: a request whose expected wait for a slot (from the recent service time) is
    # longer than this; 0 bounds the queue by count only. 100 ms keeps admitted requests' p99 within 2x of the
    # unloaded p99 at 4x overload on 2 cores (250 ms gave 3.9x; docs/reliability.md "Overload").
    max_queue_wait_ms: float = 100.0
    # Intra-op threads of the encoder while serving; 0 derives them from the cores this process may use
    # (all but one, which the GIL-bound request threads need; at least 1).
    encoder_threads: int = 0
    # OpenMP threads of FAISS search while serving. One request searches one query over a small shard;
    # a second OpenMP thread only spin-waits against the other requests' work (measured under load:
    # 14 ms CPU per 13.6k-phrase flat search on 2 threads, 3 ms on 1). Raise it for huge flat indexes.
    search_threads: int = 1
    # Prometheus /metrics on this port (0 = off); `repliq serve --metrics-port`.
    metrics_port: int = 0
    # TLS (docs/reliability.md): PEM files of the server certificate and its key; with both set the port
    # speaks TLS only. Relative paths are under the workspace.
    tls_cert: str = ""
    tls_key: str = ""
    # PEM of the CA that signs client certificates; set = mutual TLS: a client without one is refused.
    tls_client_ca: str = ""


@dataclass
class LMConfig:
    # A model-cache name ("gemma-3-270m", "smollm2-135m"), a path to a Hugging Face directory, or "none".
    name: str = "gemma-3-270m"
    # "auto": bf16 where the CPU/GPU computes it natively (the fastest setting within 2% of fp32
    # perplexity there), else fp32, since emulated bf16 is several times slower (docs/benchmarks.md).
    dtype: str = "auto"
    # torch threads while serving (process-wide in torch). 1 keeps a core free for concurrent requests
    # and, on a shared 2-core machine, was 3-10x faster than 2 under load; batch jobs pass their own.
    threads: int = 1


GENERATION_MODES = ("off", "on-request", "always")


@dataclass
class GenerationConfig:
    """The generator's settings: the ``[generation]`` section as served, and ``LMGenerator``'s own config."""

    # "off": never load the LM for serving; "on-request": load it, generate when a request asks;
    # "always": generate for every request unless it says otherwise.
    mode: str = "on-request"
    # Two sampled replies fit the serving budget on a shared 2-core CPU; more rarely finish in time.
    n_candidates: int = 2
    # Replies sampled per model call; small batches mean something is ready early.
    samples_per_call: int = 2
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 32
    context_turns: int = 3
    # Prompt budget in tokens (retrieved demonstrations + dialogue), fitted by whole turns.
    max_context_tokens: int = 384
    # Replies cut by max_new_tokens (no end of turn) are usually unfinished sentences.
    keep_truncated: bool = False
    # K retrieved demonstrations before the dialogue (UPRISE used 3); 0 = zero-shot prompts.
    demonstrations: int = 3
    # Prompt retriever (`repliq train prompts`): "auto" = the workspace's when trained, "none", or a directory.
    prompt_retriever: str = "auto"
    # At most this many seconds of a request's deadline go to generation.
    budget_s: float = 6.0
    # Score each kept reply once more, on its own, for ``gen_pmi`` (~0.5 s for two short replies on one CPU
    # thread). Serving turns it on only when the blender reads it (the ``generation`` annotator).
    pmi: bool = False

    def validate(self) -> None:
        if self.mode not in GENERATION_MODES:
            raise ValueError(f"[generation] mode {self.mode!r} is not one of {', '.join(GENERATION_MODES)}")
        for name in ("n_candidates", "samples_per_call", "max_new_tokens", "max_context_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"generation {name} must be at least 1, got {getattr(self, name)}")
        if self.demonstrations < 0:
            raise ValueError(f"generation demonstrations must be 0 or more, got {self.demonstrations}")
        if self.temperature <= 0:
            raise ValueError(f"generation temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation top_p must be in (0, 1], got {self.top_p}")


@dataclass
class RankerConfig:
    # "auto": the workspace blender (artifacts/blender) when one was trained, else bank-first order;
    # "none": never rerank; anything else: a path to a blender directory.
    blender: str = "auto"
    # "auto": the workspace specificity proxy (artifacts/reward-specificity) when trained; "none"; or a path.
    specificity: str = "auto"
    # true: a refused blender (corrupt, mismatched) makes serving fall back to retrieval only, said in the log
    # and in Versions; false (default): the server refuses to start, with the command that fixes it.
    fallback: bool = False
    # true: serve an RL policy (blender-rl) even though it failed its relevance guard (for inspection only).
    force_unguarded: bool = False


@dataclass
class LoggingConfig:
    # Opt-in decision log (dialog/serving/decision_log.py): one JSON line per Respond, for off-policy evaluation.
    decisions: bool = False
    # Directory of the decision files; empty means <home>/decisions.
    dir: str = ""
    # Off by default: the context is logged as a hash only. On: its turns too (needed by `ssa export --from-logs`).
    log_user_text: bool = False
    # The writer queue; when full, decisions are dropped and counted, never waited for.
    queue_size: int = 2048
    rotate_mb: float = 64.0
    # Files older than this many days are deleted at rotation (0 keeps them forever).
    retention_days: float = 30.0
    # Hours during which a served request id accepts Feedback.
    feedback_ttl_hours: float = 72.0


@dataclass
class ExplorationConfig:
    # Used only while decisions are logged. "epsilon-greedy" (over the top_k), "softmax" (over the top_k
    # blender scores at `temperature`) or "greedy" (no exploration: every propensity is 0 or 1).
    policy: str = "epsilon-greedy"
    epsilon: float = 0.05
    temperature: float = 0.25
    top_k: int = 5
    # 0 seeds from the OS; anything else makes choices reproducible (tests).
    seed: int = 0


@dataclass
class Settings:
    home: Path = field(default_factory=default_home)
    models_dir: Path = field(default_factory=default_models_dir)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    # The trainers' configs ([train.blender], [train.adapter], ...; TOML only, no environment overrides).
    train: TrainingConfigs = field(default_factory=TrainingConfigs)

    @property
    def bank_path(self) -> Path:
        return self.home / "bank.sqlite"

    @property
    def indexes_dir(self) -> Path:
        return self.home / "indexes"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def artifact_path(self, configured: str, default_name: str) -> Path | None:
        """Resolve an artifact setting: "none" -> None, "auto" -> the workspace default if it exists."""
        if configured == "none":
            return None
        if configured == "auto":
            path = self.artifacts_dir / default_name
            return path if path.exists() else None
        return Path(configured).expanduser()


_SECTIONS = ("encoder", "retrieval", "server", "ranker", "lm", "generation", "logging", "exploration")


def _coerce(value: Any, kind: Any, where: str) -> Any:
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind in (int, float, str, bool):
            return kind(value)
        if kind is Path:
            return Path(value).expanduser()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read {value!r} as {getattr(kind, '__name__', kind)}") from exc
    return value


def _apply(obj: Any, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        kind = hints[key]
        if is_dataclass(getattr(obj, key)):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table")
            changes[key] = _apply(getattr(obj, key), value, f"{where}.{key}")
        else:
            changes[key] = _coerce(value, kind, f"{where}.{key}")
    return replace(obj, **changes)


def load_settings(config_path: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build settings from defaults, a TOML file and ``REPLIQ_*`` environment overrides."""
    environ = dict(os.environ if environ is None else environ)
    settings = Settings(
        home=Path(environ.get("REPLIQ_HOME", ".repliq")).expanduser(),
        models_dir=Path(environ["REPLIQ_MODELS"]).expanduser() if "REPLIQ_MODELS" in environ
        else default_models_dir(),
    )
    path = config_path or (settings.home / "config.toml")
    if config_path is not None and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
        settings = _apply(settings, data, str(path))
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("REPLIQ_") or name in ("REPLIQ_HOME", "REPLIQ_MODELS"):
            continue
        section, _, key = name[len("REPLIQ_"):].lower().partition("_")
        if section in _SECTIONS and key:
            overrides.setdefault(section, {})[key] = value
    return _apply(settings, overrides, "environment") if overrides else settings
