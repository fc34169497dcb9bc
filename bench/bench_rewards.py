"""Reward benchmarks: which LM score tracks human specificity, how faithful and fast the proxy is, and how
well the relevance model separates gold replies from negatives.

Three parts, each cached on disk so reruns are cheap (teacher scores in ``rl.teacher.default_cache_path()``):

* ``teacher``   correlation of every teacher candidate (``rl.teacher.CANDIDATES``) with ConvAI2 thumbs on
                bot turns, chitchat-dataset per-conversation "interesting"/"witty" ratings (candidate averaged
                over sampled replies of a conversation) and the hand-labelled set (specific; specific ∧ sensible).
* ``proxy``     held-out Spearman of the distilled proxy vs the teacher per language, and per-phrase speed of
                teacher vs proxy ("head only" when embeddings come from retrieval, and "encode + head").
* ``relevance`` held-out AUC (gold vs random, gold vs hard negatives) per language and the ConvAI2 thumbs check.

Run: ``python bench/bench_rewards.py [--parts teacher proxy relevance]``; writes ``bench/results/rewards.json``
and prints Markdown tables. Needs the development data in ``../shared/data`` (never needed by the product).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from core.corpora import (  # noqa: E402
    Dialogue,
    context_response_pairs,
    read_anekdot_dialogues,
    read_chitchat,
    read_convai2,
    split_of,
)
from core.types import Context, Turn  # noqa: E402
from rl.teacher import (  # noqa: E402
    CANDIDATES,
    HumanSignal,
    TeacherCache,
    candidate_scores,
    correlation_table,
    default_cache_path,
    rank_definitions,
    score_with_cache,
)

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
HAND_LABELS = ROOT / "tests" / "data" / "specificity_hand_labels.jsonl"
TEACHER_LM = "gemma-3-270m"
TEACHER_DTYPE = "bf16"  # the CPU default measured in bench/results/lm.json ("recommended")
CONTEXT_TURNS = 3
ANEKDOT = DATA / "ru" / "koziev_anekdot_dialogues.tar.xz"
# Each source counts once when ranking definitions: the hand set has four signals, chitchat two.
SOURCE_WEIGHTS = {"convai2_thumbs": 1.0, "chitchat_interesting": 0.5, "chitchat_witty": 0.5,
                  "hand_specific_en": 0.25, "hand_ssa_en": 0.25, "hand_specific_ru": 0.25, "hand_ssa_ru": 0.25}


# ---- human signals -------------------------------------------------------------------------------


def convai2_signal(n: int = 300, seed: int = 0) -> HumanSignal:
    """Labelled bot turns; dialogues holding both a thumbs-up and a thumbs-down come first, so that
    within-dialogue pairs (same bot, same user) exist."""
    dialogues: list[Dialogue] = []
    for name in ("data_volunteers.json", "data_intermediate.json"):
        dialogues += list(read_convai2(DATA / "convai2" / name))
    random.Random(seed).shuffle(dialogues)
    turns: list[tuple[Dialogue, int]] = []
    for d in dialogues:
        for i, t in enumerate(d.turns):
            if i > 0 and t.meta.get("sender_class") == "Bot" and t.meta.get("evaluation_score") in (0, 1):
                turns.append((d, i))
    seen: dict[str, set[int]] = {}
    for d, i in turns:
        seen.setdefault(d.id, set()).add(d.turns[i].meta["evaluation_score"])
    mixed = {key for key, labels in seen.items() if labels == {0, 1}}
    turns.sort(key=lambda item: item[0].id not in mixed)
    picked = turns[:n]
    return HumanSignal("convai2_thumbs", [d.context(i, CONTEXT_TURNS) for d, i in picked],
                       [d.turns[i].text for d, i in picked], ["en"] * len(picked),
                       np.array([d.turns[i].meta["evaluation_score"] for d, i in picked], dtype=np.float64),
                       groups=[d.id for d, _ in picked])


def chitchat_signals(n_conversations: int = 100, per_conversation: int = 3, seed: int = 0) -> list[HumanSignal]:
    rated = [d for d in read_chitchat() if d.meta.get("ratings") and len(d.turns) > per_conversation]
    rng = random.Random(seed)
    rng.shuffle(rated)
    contexts, replies, groups, interesting, witty = [], [], [], [], []
    for d in rated[:n_conversations]:
        for i in sorted(rng.sample(range(1, len(d.turns)), per_conversation)):
            contexts.append(d.context(i, CONTEXT_TURNS))
            replies.append(d.turns[i].text)
            groups.append(d.id)
            interesting.append(float(d.meta["ratings"]["interesting"]))
            witty.append(float(d.meta["ratings"]["witty"]))
    langs = ["en"] * len(replies)
    return [HumanSignal("chitchat_interesting", contexts, replies, langs, np.array(interesting), groups, True),
            HumanSignal("chitchat_witty", contexts, replies, langs, np.array(witty), groups, True)]


def hand_label_signals(path: Path = HAND_LABELS) -> list[HumanSignal]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for language in ("en", "ru"):
        part = [r for r in rows if r["language"] == language]
        contexts = [Context((Turn("user", r["context"]),)) for r in part]
        replies = [r["response"] for r in part]
        specific = np.array([r["specific"] for r in part], dtype=np.float64)
        ssa = np.array([r["specific"] * r["sensible"] for r in part], dtype=np.float64)
        langs = [language] * len(part)
        out.append(HumanSignal(f"hand_specific_{language}", contexts, replies, langs, specific))
        out.append(HumanSignal(f"hand_ssa_{language}", contexts, replies, langs, ssa))
    return out


# ---- parts ---------------------------------------------------------------------------------------


def load_teacher(threads: int | None = None) -> Any:
    from core.config import default_models_dir
    from core.lm.wrapper import DecoderLM, LMOptions

    return DecoderLM.from_cache(TEACHER_LM, default_models_dir(), LMOptions(dtype=TEACHER_DTYPE, threads=threads))


def teacher_study(lm: Any, cache: TeacherCache) -> dict[str, Any]:
    signals = [convai2_signal(), *chitchat_signals(), *hand_label_signals()]
    values: dict[str, dict[str, np.ndarray]] = {}
    started = time.perf_counter()
    for signal in signals:
        scores = score_with_cache(lm, signal.contexts, signal.replies, signal.languages, cache,
                                  context_turns=CONTEXT_TURNS)
        values[signal.name] = candidate_scores(scores)
    seconds = time.perf_counter() - started
    table = correlation_table(values, signals)
    names = [s.name for s in signals]
    return {"lm_id": lm.lm_id, "seconds": seconds, "signals": {s.name: len(s.replies) for s in signals},
            "table": table, "ranking": rank_definitions(table, names),
            "ranking_by_source": rank_definitions(table, names, SOURCE_WEIGHTS),
            "ranking_given_length": rank_definitions(table, names, SOURCE_WEIGHTS, "spearman_given_control")}


def teacher_markdown(study: dict[str, Any]) -> str:
    signals = list(study["signals"])
    lines = ["| candidate | " + " | ".join(signals) + " | mean ρ | mean ρ by source | mean partial ρ |",
             "|" + "---|" * (len(signals) + 4)]
    ranks = [dict(study[k]) for k in ("ranking", "ranking_by_source", "ranking_given_length")]
    for name in CANDIDATES:
        cells = []
        for s in signals:
            m = study["table"][name][s]
            partial = m.get("spearman_given_control", float("nan"))
            cells.append(f"{m['spearman']:+.2f} / {m['pairwise_accuracy']:.2f} / {partial:+.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(f"{r[name]:+.3f}" for r in ranks) + " |")
    convai = {n: study["table"][n]["convai2_thumbs"] for n in CANDIDATES}
    pairs = next(iter(convai.values())).get("within_group_pairs", 0)
    lines += ["", "Cells: Spearman ρ / pairwise accuracy / partial ρ given length (token count). "
              f"ConvAI2 within-dialogue pairwise accuracy ({pairs:.0f} pairs): "
              + ", ".join(f"{n} {m.get('within_group_accuracy', float('nan')):.2f}" for n, m in convai.items())]
    return "\n".join(lines)


# ---- proxy ---------------------------------------------------------------------------------------


def proxy_phrases(per_language: int = 1500, seed: int = 0) -> tuple[list[str], list[str]]:
    """Bank-like phrases: the starter bank plus clean corpus replies (chitchat in English, the Russian
    joke dialogues in Russian), ``per_language`` in all per language."""
    from core.bank.default import chitchat_rows, starter_rows

    starter = starter_rows()
    texts, languages = [], []
    for language in ("en", "ru"):
        own = [r.text for r in starter if r.language == language]
        need = max(0, per_language - len(own))
        if language == "en":
            extra = [r.text for r in chitchat_rows(limit=need, seed=seed)]
        else:
            # The bank's chat-line filter is tuned on English; joke turns only need a length and a capital.
            seen, replies = set(texts), []
            for d in read_anekdot_dialogues(ANEKDOT, limit=20_000):
                for t in d.turns[1:]:
                    if 10 <= len(t.text) <= 300 and t.text[0].isupper() and t.text not in seen:
                        seen.add(t.text)
                        replies.append(t.text)
            extra = random.Random(seed).sample(replies, min(need, len(replies)))
        texts += own + extra
        languages += [language] * (len(own) + len(extra))
    return texts, languages


def _shuffled_words(texts: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def topicalchat_replies(n: int, seed: int = 0) -> list[str]:
    from core.corpora import read_topicalchat

    replies = [t.text for d in read_topicalchat(DATA / "topicalchat_valid" / "valid_freq.json", limit=300)
               for t in d.turns if 10 <= len(t.text) <= 300]
    return random.Random(seed).sample(replies, n)


def proxy_study(lm: Any, cache: TeacherCache, encoder: Any, raw_encoder: Any, seed: int = 0) -> dict[str, Any]:
    from core.bank.default import starter_rows
    from core.lm.scoring import score_texts
    from rl.artifacts import fit_ridge
    from rl.proxy import ProxyConfig, ProxyEnsemble, length_features, train_specificity_proxy
    from rl.teacher import DEFAULT_DEFINITION, teacher_values

    def teacher(texts: list[str], languages: list[str]) -> np.ndarray:
        return teacher_values(score_with_cache(lm, [None] * len(texts), texts, languages, cache), DEFAULT_DEFINITION)

    texts, languages = proxy_phrases()
    started = time.perf_counter()
    y = teacher(texts, languages)
    out: dict[str, Any] = {"definition": DEFAULT_DEFINITION, "phrases": len(texts),
                           "by_language": {lang: languages.count(lang) for lang in ("en", "ru")},
                           "teacher_scoring_s_with_cache": time.perf_counter() - started, "heads": {}}
    variants = {"e5 + length, ridge": ProxyConfig(head="ridge"), "e5 + length, mlp": ProxyConfig(head="mlp"),
                "lexical (trigrams + length), ridge": ProxyConfig(head="ridge", inputs="lexical")}
    lexical = None
    for name, config in variants.items():
        trained, out["heads"][name] = train_specificity_proxy(None, texts, y, None, seed, languages, config,
                                                              encoder=encoder)
        lexical = trained if config.inputs == "lexical" else lexical
    # The same split train_specificity_proxy uses, for the baseline and the ensemble.
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[: round(0.2 * len(y))], order[round(0.2 * len(y)):]
    length_only = fit_ridge(length_features([texts[i] for i in train]), y[train])
    pred = length_only(length_features([texts[i] for i in test]))
    out["length_only_baseline"] = {lang: float(spearmanr(pred[m], y[test][m]).statistic) for lang in ("en", "ru")
                                   for m in [np.array([languages[i] == lang for i in test])]}
    ensemble, _ = train_specificity_proxy(None, [texts[i] for i in train], y[train], None, seed,
                                          [languages[i] for i in train], ProxyConfig(members=5, held_out=0.0),
                                          encoder=encoder)
    held = [texts[i] for i in test]
    mean, _ = ensemble.score_with_disagreement(held)
    out["ensemble_held_out_spearman"] = float(spearmanr(mean, y[test]).statistic)
    # Within the hand-written starter bank alone (similar lengths and style) ranking is much harder.
    starter = {r.text for r in starter_rows()}
    narrow = {}
    for lang in ("en", "ru"):
        mask = np.array([texts[i] in starter and languages[i] == lang for i in test])
        narrow[lang] = {"n": int(mask.sum()), "spearman": float(spearmanr(mean[mask], y[test][mask]).statistic)}
    out["ensemble_held_out_starter_only"] = narrow
    # Speed: the same 64 held-out phrases through the teacher (no cache) and the proxies. The machine is
    # shared, so each proxy timing is the best of several passes (the teacher's single pass favours it).
    probe = held[:64]
    started = time.perf_counter()
    score_texts(lm, probe, batch_size=16)
    teacher_per = (time.perf_counter() - started) / len(probe)
    single = ProxyEnsemble(ensemble.heads[:1], ensemble.config, encoder)

    def best_of(passes: int, fn: Any) -> float:
        times = []
        for _ in range(passes):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) / len(probe))
        return min(times)

    encode_per = best_of(2, lambda: single.score(probe, passages=raw_encoder.encode_passages(probe)))
    passages = raw_encoder.encode_passages(probe)
    head_per = best_of(20, lambda: single.score(probe, passages=passages))
    lexical_per = best_of(5, lambda: lexical.score(probe))
    out["speed"] = {"teacher_s_per_phrase": teacher_per, "encode_plus_head_s_per_phrase": encode_per,
                    "head_only_s_per_phrase": head_per, "ratio_encode_plus_head": teacher_per / encode_per,
                    "lexical_s_per_phrase": lexical_per, "ratio_lexical": teacher_per / lexical_per,
                    "ratio_head_only": teacher_per / head_per, "lm_id": lm.lm_id, "threads": _threads()}
    # Shift alarm: does the ensemble's disagreement rise where its error does?
    sets = {"held_out": (held[:100], [languages[i] for i in test[:100]]),
            "topicalchat": (topicalchat_replies(100, seed), ["en"] * 100),
            "word_shuffled": (_shuffled_words(held[:100], seed), [languages[i] for i in test[:100]])}
    sd = float(y.std())
    alarm: dict[str, Any] = {}
    spreads, errors = [], []
    for name, (probe_texts, probe_langs) in sets.items():
        mean, spread = ensemble.score_with_disagreement(probe_texts)
        error = np.abs(mean - teacher(probe_texts, probe_langs)) / sd
        alarm[name] = {"mean_disagreement_sd": float(spread.mean() / sd), "mean_abs_error_sd": float(error.mean())}
        spreads.append(spread)
        errors.append(error)
    pooled = spearmanr(np.concatenate(spreads), np.concatenate(errors)).statistic
    alarm["spearman_disagreement_vs_error"] = float(pooled)
    out["shift_alarm"] = alarm
    return out


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def proxy_markdown(study: dict[str, Any]) -> str:
    lines = ["| proxy | held-out ρ en | held-out ρ ru | held-out ρ all |", "|---|---|---|---|"]
    for name, m in study["heads"].items():
        by = m["held_out_spearman_by_language"]
        lines.append(f"| {name} | {by['en']:.3f} | {by['ru']:.3f} | {m['held_out_spearman']:.3f} |")
    base = study["length_only_baseline"]
    lines.append(f"| length features only, ridge | {base['en']:.3f} | {base['ru']:.3f} | |")
    lines.append(f"| mlp ×5 ensemble | | | {study['ensemble_held_out_spearman']:.3f} |")
    narrow = study["ensemble_held_out_starter_only"]
    lines.append(f"| mlp ×5 ensemble, held-out starter phrases only (n = {narrow['en']['n']} / {narrow['ru']['n']}) "
                 f"| {narrow['en']['spearman']:.3f} | {narrow['ru']['spearman']:.3f} | |")
    sp = study["speed"]
    lines += ["", f"Speed per phrase ({sp['lm_id']}, {sp['threads']} thread(s)): teacher "
              f"{sp['teacher_s_per_phrase'] * 1e3:.1f} ms, "
              f"encode + head {sp['encode_plus_head_s_per_phrase'] * 1e3:.2f} ms "
              f"(×{sp['ratio_encode_plus_head']:.1f}), head only {sp['head_only_s_per_phrase'] * 1e6:.1f} µs "
              f"(×{sp['ratio_head_only']:.0f}), lexical proxy {sp['lexical_s_per_phrase'] * 1e6:.0f} µs "
              f"(×{sp['ratio_lexical']:.0f}).", "",
              "| probe set (100) | ensemble sd / teacher sd | |proxy − teacher| / teacher sd |", "|---|---|---|"]
    alarm = study["shift_alarm"]
    for name in ("held_out", "topicalchat", "word_shuffled"):
        lines.append(f"| {name} | {alarm[name]['mean_disagreement_sd']:.3f} | {alarm[name]['mean_abs_error_sd']:.3f} |")
    lines.append(f"\nSpearman(disagreement, error) over the 300 probes: {alarm['spearman_disagreement_vs_error']:+.3f}")
    return "\n".join(lines)


# ---- relevance -----------------------------------------------------------------------------------


def relevance_pairs(per_language: int = 1500, seed: int = 0) -> list[Any]:
    """Train-split context/reply pairs: chitchat (en) and the Russian joke dialogues (ru)."""
    out = []
    sources = [(read_chitchat(limit=3000), "en"), (read_anekdot_dialogues(ANEKDOT, limit=20_000), "ru")]
    for dialogues, _ in sources:
        pairs = [p for p in context_response_pairs(dialogues, CONTEXT_TURNS)
                 if split_of(p.conversation_id) == "train" and 2 <= len(p.response) <= 300]
        random.Random(seed).shuffle(pairs)
        out += pairs[:per_language]
    return out


_FULL_PROXY: dict[str, Any] = {}


def full_proxy(lm: Any, cache: TeacherCache, encoder: Any, seed: int = 0) -> Any:
    """The proxy trained on all bench phrases (held_out=0), built once per process."""
    from rl.proxy import ProxyConfig, train_specificity_proxy
    from rl.teacher import DEFAULT_DEFINITION, teacher_values

    if "proxy" not in _FULL_PROXY:
        texts, languages = proxy_phrases()
        y = teacher_values(score_with_cache(lm, [None] * len(texts), texts, languages, cache), DEFAULT_DEFINITION)
        _FULL_PROXY["proxy"], _ = train_specificity_proxy(None, texts, y, None, seed, languages,
                                                          ProxyConfig(held_out=0.0), encoder=encoder)
    return _FULL_PROXY["proxy"]


def relevance_study(encoder: Any, lm: Any, cache: TeacherCache, seed: int = 0) -> dict[str, Any]:
    from rl.relevance import RelevanceConfig, train_relevance_model
    from rl.rewards import RewardConfig, RewardModel, proxy_specificity
    from rl.teacher import DEFAULT_DEFINITION, pairwise_accuracy, signal_metrics, teacher_values

    pairs = relevance_pairs(seed=seed)
    out: dict[str, Any] = {"pairs": len(pairs), "heads": {}}
    models = {}
    for head in ("logistic", "mlp"):
        models[head], out["heads"][head] = train_relevance_model(None, pairs, None, seed, RelevanceConfig(head=head),
                                                                 encoder=encoder)
    convai = convai2_signal()
    out["convai2_thumbs"] = {head: signal_metrics(m.score(convai.contexts, convai.replies), convai)
                             for head, m in models.items()}
    # The gate at work on the hand labels. "ssa": specific ∧ sensible vs the rest; "rare_words": on-topic
    # specific replies vs off-topic specific ones (rare words with no relevance), where the gate must act.
    proxy = full_proxy(lm, cache, encoder, seed)
    rows = [json.loads(line) for line in HAND_LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]
    gate: dict[str, Any] = {}
    for head, model in models.items():
        for language in ("en", "ru"):
            part = [r for r in rows if r["language"] == language]
            contexts = [Context((Turn("user", r["context"]),)) for r in part]
            replies = [r["response"] for r in part]
            ssa = np.array([r["specific"] * r["sensible"] for r in part], dtype=np.float64)
            specific = np.array([r["specific"] == 1 for r in part])
            teacher = teacher_values(score_with_cache(lm, [None] * len(part), replies, [language] * len(part), cache),
                                     DEFAULT_DEFINITION)
            scores = {"teacher": teacher, "relevance": model.score(contexts, replies)}
            for form in ("specificity_only", "additive", "gated"):
                reward = RewardModel(model, proxy_specificity(proxy), RewardConfig(form=form))
                scores[form] = reward.fit_reference(contexts, replies).rewards(contexts, replies).total
            gate[f"{head} {language}"] = {name: {"ssa_auc": pairwise_accuracy(v, ssa),
                                                 "rare_words_auc": pairwise_accuracy(v[specific], ssa[specific])}
                                          for name, v in scores.items()}
    out["hand_gate"] = gate
    return out


def relevance_markdown(study: dict[str, Any]) -> str:
    lines = ["| model | lang | AUC gold vs random | AUC gold vs hard |", "|---|---|---|---|"]
    cosine = study["heads"]["logistic"]["held_out_cosine_only"]
    for lang, row in cosine.items():
        lines.append(f"| e5 cosine only | {lang} | {row['auc_gold_vs_random']:.3f} | {row['auc_gold_vs_hard']:.3f} |")
    for head, m in study["heads"].items():
        for lang, row in m["held_out"].items():
            lines.append(f"| {head} | {lang} | {row['auc_gold_vs_random']:.3f} | {row['auc_gold_vs_hard']:.3f} |")
    lines.append("")
    for head, c in study["convai2_thumbs"].items():
        lines.append(f"ConvAI2 thumbs ({head}): Spearman {c['spearman']:+.3f}, AUC up vs down "
                     f"{c['pairwise_accuracy']:.3f}, within-dialogue {c['within_group_accuracy']:.3f} "
                     f"({c['within_group_pairs']:.0f} pairs).")
    lines += ["", "| relevance head, language: hand-set AUC | teacher | relevance | specificity_only | additive "
              "| gated |",
              "|---|---|---|---|---|---|"]
    for lang, per in study["hand_gate"].items():
        for metric, label in (("ssa_auc", "specific ∧ sensible vs rest"),
                              ("rare_words_auc", "on- vs off-topic specific")):
            cells = " | ".join(f"{per[name][metric]:.3f}" for name in
                               ("teacher", "relevance", "specificity_only", "additive", "gated"))
            lines.append(f"| {lang}: {label} | {cells} |")
    return "\n".join(lines)


class MemoEncoder:
    """The encoder with every text remembered: the parts train several models on the same texts."""

    def __init__(self, encoder: Any) -> None:
        self.encoder, self.identity, self.dim = encoder, encoder.identity, encoder.dim
        self.memo: dict[tuple[str, str], np.ndarray] = {}

    def _encode(self, kind: str, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if (kind, t) not in self.memo))
        if missing:
            fn = self.encoder.encode_queries if kind == "q" else self.encoder.encode_passages
            self.memo.update({(kind, t): row for t, row in zip(missing, fn(missing), strict=True)})
        return np.stack([self.memo[(kind, t)] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode("q", list(texts))

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode("p", list(texts))


def load_encoder() -> Any:
    from core.config import Settings
    from retriever.encoder import Encoder

    return Encoder.from_config(Settings())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["teacher", "proxy", "relevance"],
                        choices=["teacher", "proxy", "relevance"])
    # One thread: on this shared 2-core machine two threads ran several times slower under load.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None,
                        help="teacher-score cache (default: rl.teacher.default_cache_path()); "
                             "an empty one times the LM work from scratch")
    parser.add_argument("--out", type=Path, default=RESULTS / "rewards.json")
    args = parser.parse_args(argv)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    cache = TeacherCache(args.cache or default_cache_path())
    markdown = []
    lm = load_teacher(args.threads)
    raw_encoder = load_encoder() if {"proxy", "relevance"} & set(args.parts) else None
    encoder = MemoEncoder(raw_encoder) if raw_encoder is not None else None
    if "teacher" in args.parts:
        results["teacher"] = teacher_study(lm, cache)
        markdown.append(teacher_markdown(results["teacher"]))
    if "proxy" in args.parts:
        results["proxy"] = proxy_study(lm, cache, encoder, raw_encoder)
        markdown.append(proxy_markdown(results["proxy"]))
    if "relevance" in args.parts:
        results["relevance"] = relevance_study(encoder, lm, cache)
        markdown.append(relevance_markdown(results["relevance"]))
    from core.atomic import atomic_write_json

    atomic_write_json(args.out, results)
    text = "\n\n".join(markdown)
    print(text)
    return text


if __name__ == "__main__":
    main()
