"""The jobs' and trainers' config dataclasses, each default declared once, on the ground floor.

The trainers (retriever, ranker, rl) and the jobs (``dialog/jobs``) use these classes; the CLI builds
its flags' defaults from them (tests/unit/test_cli_defaults.py fails when a flag and its field disagree).
They live here, not beside their trainers, because the CLI needs the defaults to build its parser and
must not import LightGBM, torch or the reward models to print ``--help``; and because a default that is
declared in one place cannot drift between the library, the job and the command line.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core.executor import ExecutorConfig
from core.rl_eval_config import RLEvalConfig
from core.training_corpora import BlenderCorpora


@dataclass
class RetrieverTrainConfig:
    base: str = "e5-small"
    name: str = "e5-small-ft"
    batch_size: int = 32
    max_seq_length: int = 80
    epochs: int = 1
    max_steps: int = 0  # 0: as many as ``epochs`` give
    learning_rate: float = 3e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    scale: float = 20.0
    freeze_embeddings: bool = True
    seed: int = 13
    checkpoint_every: int = 25
    log_every: int = 5
    num_threads: int = 0

    def identity(self) -> dict[str, Any]:
        """The fields that change the trained weights; a checkpoint resumes only under the same ones."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "log_every", "num_threads")}

    def validate(self) -> None:
        problems = [f"{f.name} must be positive" for f in fields(self)
                    if f.name in ("batch_size", "max_seq_length", "epochs", "checkpoint_every", "log_every")
                    and getattr(self, f.name) <= 0]
        if self.batch_size < 2:
            problems.append("batch_size must be at least 2 (in-batch negatives)")
        if not 0 <= self.warmup_fraction < 1:
            problems.append("warmup_fraction must be in [0, 1)")
        if self.learning_rate <= 0 or self.max_steps < 0:
            problems.append("learning_rate must be positive and max_steps >= 0")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            problems.append(f"name {self.name!r} must be a plain directory name (letters, digits, . _ -)")
        if problems:
            raise ValueError("invalid retriever training config: " + "; ".join(problems))


@dataclass
class BuilderConfig:
    k_retrieved: int = 10
    k_random: int = 10
    # Replies of *other* contexts of the same corpus, language and split (the corpus is the conversation
    # id's prefix, "chitchat:", "topicalchat:"; a reply of another corpus would give the gold away by
    # style, as bank phrases did). Without them every negative
    # is a bank phrase and the only corpus text is the gold, so the blender learns "looks like the
    # corpus" (length, word rarity) instead of "fits the context" (docs/benchmarks.md, ranking eval).
    k_corpus: int = 0
    seed: int = 0
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    batch_size: int = 64  # contexts per batch: the unit an executor worker annotates
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where pools and features are computed


# The pools `repliq train blender` builds unless told. No retrieved negatives: the bank's top hits are often
# fine replies labelled 0, and with them the blender fell below its own retriever on held-out dialogues
# (docs/benchmarks.md, "pool mix"); random bank phrases keep it from preferring corpus style over bank style.
DEFAULT_POOLS = BuilderConfig(k_retrieved=0, k_random=10, k_corpus=30)


@dataclass
class BlenderTrainConfig:
    # Small, regularized trees: beyond the first few dozen rounds bigger ones only fit noise on
    # chit-chat data (dev R@1 peaks while train R@1 keeps climbing).
    num_leaves: int = 15
    learning_rate: float = 0.05
    rounds: int = 500
    # Rounds without a dev improvement before stopping; 0 trains all ``rounds``.
    early_stopping: int = 50
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    bagging_fraction: float = 1.0
    bagging_freq: int = 0
    lambda_l2: float = 1.0
    # Early stopping watches NDCG@10: NDCG@1 on a few hundred dev pools is R@1, so noisy that it stopped a
    # blender at 8 trees that NDCG@10 grew to 156, +3.3 points test R@1 (docs/benchmarks.md).
    eval_at: tuple[int, ...] = (10,)
    seed: int = 0
    # 0 lets LightGBM use every core; training runs off the request path.
    num_threads: int = 0
    log_every: int = 10

    def params(self) -> dict[str, Any]:
        return {
            "objective": "lambdarank", "metric": "ndcg", "eval_at": list(self.eval_at),
            "num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction, "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2, "seed": self.seed, "deterministic": True,
            "num_threads": self.num_threads, "verbosity": -1,
        }


REWARD_FORMS = ("gated", "additive", "specificity_only")
STANDARDIZE = ("per_language", "pooled")


@dataclass(frozen=True)
class RewardConfig:
    form: str = "gated"
    lam: float = 1.0
    # What produced the specificity: "proxy" (the distilled ensemble) or "teacher" (the LM itself).
    specificity: str = "proxy"
    # "per_language": one specificity scale per language (rows must say their language); "pooled": one scale.
    standardize: str = "per_language"

    def validate(self) -> None:
        if self.form not in REWARD_FORMS:
            raise ValueError(f"reward form must be one of {', '.join(REWARD_FORMS)}, got {self.form!r}")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"reward λ must be a finite number >= 0, got {self.lam}")
        if self.standardize not in STANDARDIZE:
            raise ValueError(f"reward standardize must be one of {', '.join(STANDARDIZE)}, got {self.standardize!r}")
        if self.specificity not in ("proxy", "teacher"):
            raise ValueError(f"reward specificity must be 'proxy' or 'teacher', got {self.specificity!r}")


# Heads of the small reward models (rl.artifacts fits them).
REWARD_HEADS = ("ridge", "logistic", "mlp")
PROXY_INPUTS = ("phrase", "pair", "lexical")
# The teacher's specificity definition (rl.teacher): mean unconditional surprisal of the reply.
DEFAULT_TEACHER = "uncond_surprisal"


@dataclass(frozen=True)
class ProxyConfig:
    head: str = "mlp"
    inputs: str = "phrase"
    teacher: str = DEFAULT_TEACHER
    # Model-cache name of the LM whose scores were distilled (the teacher that judges RL runs).
    teacher_lm: str = "gemma-3-270m"
    members: int = 1
    # Share of the training rows each ensemble member sees (a bootstrap-free subsample); 1.0 = all.
    subsample: float = 0.8
    held_out: float = 0.2
    context_turns: int = 3
    hidden: int = 256
    epochs: int = 200
    # Ridge penalty; None picks it by generalized cross-validation (rl.artifacts.fit_ridge).
    l2: float | None = None

    def validate(self) -> None:
        if self.head not in REWARD_HEADS:
            raise ValueError(f"proxy head must be one of {REWARD_HEADS}, got {self.head!r}")
        if self.inputs not in PROXY_INPUTS:
            raise ValueError(f"proxy inputs must be one of {PROXY_INPUTS}, got {self.inputs!r}")
        if self.inputs == "lexical" and self.head != "ridge":
            raise ValueError("lexical inputs take the ridge head (thousands of sparse columns)")
        if self.members < 1 or not 0.0 < self.subsample <= 1.0 or not 0.0 <= self.held_out < 1.0:
            raise ValueError(f"need members >= 1, 0 < subsample <= 1 and 0 <= held_out < 1; got {self}")


TUNE_OPTIMIZERS = ("lgbm", "cem")


@dataclass(frozen=True)
class PolicyTuneConfig:
    """One policy-tuning run; the defaults are what ``repliq rl tune`` uses (its flags read them from here)."""

    beta: float = 0.1
    # Entropy bonus: keeps the policy from collapsing onto one candidate per pool.
    alpha: float = 0.02
    rounds_per_iteration: int = 15
    iterations: int = 4
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    lambda_l2: float = 1.0
    temperature: float = 1.0
    target_kl: float | None = None
    kl_horizon: float = 10.0
    seed: int = 0
    optimizer: str = "lgbm"
    num_threads: int = 1
    bagging_fraction: float = 1.0  # < 1: each round fits a seeded row sample, so seeds give different policies
    hess_floor: float = 1e-6
    cem_population: int = 64
    cem_elite: int = 8
    cem_init_std: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in TUNE_OPTIMIZERS:
            problems.append(f"optimizer must be one of {TUNE_OPTIMIZERS}, got {self.optimizer!r}")
        if self.rounds_per_iteration < 1 or self.iterations < 0:
            problems.append("rounds_per_iteration must be >= 1 and iterations >= 0")
        if self.learning_rate <= 0 or self.num_leaves < 2 or not 0 < self.bagging_fraction <= 1:
            problems.append("learning_rate must be positive, num_leaves >= 2 and bagging_fraction in (0, 1]")
        if self.beta < 0 or self.alpha < 0 or self.temperature <= 0:
            problems.append(f"need beta >= 0, alpha >= 0, temperature > 0; got {self.beta}, {self.alpha}, "
                            f"{self.temperature}")
        if self.target_kl is not None and (self.beta <= 0 or self.target_kl <= 0 or self.kl_horizon <= 0):
            problems.append("an adaptive KL target needs a positive initial beta, target_kl and kl_horizon; "
                            "use target_kl=None for a fixed beta")
        if not 1 <= self.cem_elite < self.cem_population or self.cem_init_std <= 0:
            problems.append(f"need 1 <= cem_elite < cem_population and cem_init_std > 0, got {self.cem_elite}, "
                            f"{self.cem_population}, {self.cem_init_std}")
        if problems:
            raise ValueError("invalid policy tuning config: " + "; ".join(problems))

    def resume_key(self) -> dict[str, Any]:
        """Settings that must match to continue a run; ``iterations`` may grow."""
        return {k: v for k, v in asdict(self).items() if k != "iterations" and (k, v) != ("bagging_fraction", 1.0)}


@dataclass
class RLRunConfig:
    betas: tuple[float, ...] = (0.05, 0.2, 1.0, 3.0)
    # The β whose policy is saved; None picks it by the relevance guard (see ``choose_beta``).
    main_beta: float | None = None
    # Relevance retention guard: dev R@1 may fall at most this far below π_ref (issue target: 2 points).
    max_r_at_1_drop: float = 0.02
    # Every β's run tunes with these settings and its own β (``policy.beta`` is not used).
    policy: PolicyTuneConfig = field(default_factory=PolicyTuneConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    # Dev candidates sampled to measure the teacher's spread (the unit of "sd" in the targets).
    teacher_reference: int = 400
    samples_in_report: int = 20
    # Seeds the dev samples (teacher reference, report samples, intervals); the policy has its own.
    seed: int = 0
    # Near-tie rule (rl.policy_guard): logits by which another reply must beat π_ref's top one to replace it.
    tie_tolerance: float = 0.05
    evaluation: RLEvalConfig = field(default_factory=RLEvalConfig)  # dev set, seeds, judges, targets (issue 14)


# Topical-Chat training pairs for the retriever: about two turns of each train-split conversation.
TOPICALCHAT_PAIRS = 2000
# Held-out pairs per language and corpus for the retriever's before/after R@1-of-10 in its manifest.
DEV_PAIRS = 100


@dataclass
class RetrieverData:
    """The pairs a retriever run trains on; the dev split of every source joins the dev metric."""

    # Russian dialogues (Koziev anekdot .tar.xz); English chit-chat always takes part.
    russian: Path | None = None
    per_language: int = 2000
    # Topical-Chat folder (valid_freq/valid_rare.json): its train hash split is added (domain adaptation).
    topicalchat: Path | None = None
    topicalchat_pairs: int = TOPICALCHAT_PAIRS
    # JSONL dialogue files; each adds ``corpus_pairs`` training pairs per language.
    corpora: list[Path] = field(default_factory=list)
    corpus_pairs: int = 2000
    dev_pairs: int = DEV_PAIRS
    # Mine hard negatives with the base encoder before training.
    hard_negatives: bool = False


REWARD_KINDS = ("preference", "relevance", "specificity")
# The workspace proxy is an ensemble: the spread of its members is RL's distribution-shift alarm. 128 hidden units
# keep the five heads under 1 MB, so the shipped proxy stays a small file; on the default bank its held-out
# Spearman was within 0.01 of 256 units' (en 0.95, ru 0.88).
WORKSPACE_PROXY = ProxyConfig(members=5, hidden=128)


@dataclass
class RewardJobConfig:
    kind: str = "specificity"
    # Preferences JSONL from `repliq ssa preferences` (kind preference).
    data: Path | None = None
    # Russian dialogues beside English chit-chat (kind relevance).
    russian: Path | None = None
    # Contexts per language the relevance model trains on.
    relevance_pairs: int = 1500
    # The specificity proxy (its ``teacher_lm`` is replaced by ``[lm] name``: the LM that scores the bank).
    proxy: ProxyConfig = field(default_factory=lambda: WORKSPACE_PROXY)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where the teacher LM scores the bank


@dataclass(frozen=True)
class BankScoreConfig:
    # LM name or directory; None takes ``[lm] name`` from the settings.
    lm: str | None = None
    # None takes ``[lm] dtype`` from the settings.
    dtype: str | None = None
    batch_size: int = 32
    # torch threads; 0 leaves torch's default (all cores).
    threads: int = 0
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


@dataclass(frozen=True)
class IndexBuildConfig:
    # Rebuild from scratch instead of re-encoding only what changed.
    full: bool = False
    # Encoder name or local model directory; None keeps ``[encoder] name``.
    encoder: str | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


@dataclass
class EvalRankingConfig:
    """`repliq eval ranking`: which held-out data, which encoders, which blender, where the report goes."""

    # Topical-Chat folder (dev+test hash splits), Russian dialogues (dev split), JSONL files (all dialogues).
    topicalchat: Path | None = None
    russian: Path | None = None
    corpora: list[Path] = field(default_factory=list)
    # Encoder names/paths to compare; empty means the workspace encoder.
    encoders: list[str] = field(default_factory=list)
    contexts: int = 300
    # None: the workspace blender; ``use_blender=False`` leaves the blender out.
    blender: Path | None = None
    use_blender: bool = True
    # None: <home>/artifacts/eval.
    out: Path | None = None


@dataclass
class AdapterTrainConfig:
    rank: int = 32
    epochs: int = 12
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    scale: float = 20.0  # inverse temperature of the in-batch softmax (sentence-transformers' MNRL default)
    dev_group: int = 10  # dev R@1 of `dev_group` candidates: the gold reply among random others
    seed: int = 0

    def validate(self) -> None:
        for name in ("rank", "epochs", "batch_size", "dev_group"):
            if getattr(self, name) < 1:
                raise ValueError(f"adapter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("adapter batch_size must be >= 2 (in-batch negatives)")
        if self.learning_rate <= 0 or self.scale <= 0:
            raise ValueError("adapter learning_rate and scale must be positive")


@dataclass
class AdapterJobConfig:
    russian: Path | None = None  # Koziev dialogues (.tar.xz); without it the adapter learns English only
    topicalchat: Path | None = None  # folder with Topical-Chat valid_freq/valid_rare.json (train split used)
    pairs_per_language: int = 8000  # chitchat and Russian pairs each
    topicalchat_pairs: int = 4000
    holdout_fraction: float = 0.05  # train conversations held out to choose the epoch and draw the curve
    curve: tuple[int, ...] = (500, 2000, 8000)  # pair counts of the R@1-vs-pairs curve (plus all pairs)
    out: Path | None = None
    train: AdapterTrainConfig = field(default_factory=AdapterTrainConfig)


@dataclass
class TrainDefaultConfig:
    """`repliq train default`: the shipped chain rebuilt from public data, step by step."""

    # Folder with ru/koziev_anekdot_dialogues.tar.xz and topicalchat_valid/ (the project's shared data).
    data: Path | None = None
    adapter: AdapterJobConfig = field(default_factory=AdapterJobConfig)
    corpora: BlenderCorpora = field(default_factory=BlenderCorpora)
    blender: BlenderTrainConfig = field(default_factory=BlenderTrainConfig)
    # Reward heads (specificity proxy: LM-scores the whole bank first, slow on a CPU) and the RL policy.
    rewards: bool = False
    rl: bool = False
    rl_run: RLRunConfig = field(default_factory=RLRunConfig)
    # Copy the results into core/data/shipped (what a fresh install serves), within this budget.
    publish: bool = False
    max_shipped_bytes: int = 5_000_000


@dataclass
class TrainingConfigs:
    """The trainers' own configs as one workspace sets them: ``[train.<name>]`` tables in config.toml.

    ``Settings.train`` is this object, so a workspace that trains with, say, more blender rounds says so once,
    and every job that reads it (``repliq train default`` builds its whole chain from it) agrees.
    """

    retriever: RetrieverTrainConfig = field(default_factory=RetrieverTrainConfig)
    corpora: BlenderCorpora = field(default_factory=BlenderCorpora)
    pools: BuilderConfig = field(default_factory=lambda: DEFAULT_POOLS)
    blender: BlenderTrainConfig = field(default_factory=BlenderTrainConfig)
    adapter: AdapterJobConfig = field(default_factory=AdapterJobConfig)
    proxy: ProxyConfig = field(default_factory=lambda: WORKSPACE_PROXY)
    rl: RLRunConfig = field(default_factory=RLRunConfig)
