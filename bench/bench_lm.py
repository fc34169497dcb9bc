"""Decoder-LM speed and quality per precision and thread count (default model: gemma-3-270m).

For fp32, bf16 and int8 (dynamic quantization of the Linear layers), each at 1 and 2 torch threads:
- scoring throughput: unconditional scores of a fixed bilingual set of 40 sentences (20 ru, 20 en),
  batch 16, best of ``--rounds`` timed passes after a warm-up;
- generation speed: greedy decoding of exactly ``--new-tokens`` tokens after a Russian dialogue prompt
  (best of the rounds);
- quality: corpus perplexity of the same 40 sentences, relative to fp32 from the same run.
The recommended setting is the fastest scorer whose perplexity is within 2% of fp32. Bank scoring
time is extrapolated from the scoring throughput (bank phrases are about as long as these sentences).
Writes ``bench/results/lm.json`` and prints a Markdown table. Numbers depend on how busy the cores are
(the load average at the start is recorded next to them); rounds interleave the settings so ratios
from the same run stay comparable.

Run: ``python bench/bench_lm.py [--model gemma-3-270m] [--threads 1 2] [--dtypes fp32 bf16 int8]``
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.atomic import atomic_write_json  # noqa: E402
from core.config import default_models_dir  # noqa: E402
from core.lm.prompts import prompt_format  # noqa: E402
from core.lm.scoring import score_texts  # noqa: E402
from core.lm.wrapper import DecoderLM, LMOptions, native_bf16, resolve_dtype  # noqa: E402
from core.types import Context, Turn  # noqa: E402

QUALITY_TOLERANCE = 0.02
BANK_SIZES = (10_000, 100_000)
SENTENCES = [
    "Сегодня отличная погода, давай пойдём гулять в парк.",
    "Я вчера посмотрел новый фильм, и он мне очень понравился.",
    "У меня дома живут две кошки и собака.",
    "Какую музыку ты обычно слушаешь по вечерам?",
    "Мы собираемся поехать на море в конце лета.",
    "Не забудь купить хлеб и молоко по дороге домой.",
    "Моя сестра учится в университете на врача.",
    "Извини, я сегодня не смогу прийти на встречу.",
    "Этот ресторан славится своей домашней пастой.",
    "Поезд задерживается примерно на двадцать минут.",
    "Я люблю читать книги перед сном.",
    "Спасибо за помощь, без тебя я бы не справился.",
    "Зимой здесь очень холодно и много снега.",
    "Давай встретимся у входа в метро в шесть часов.",
    "Он работает программистом в небольшой компании.",
    "Ты уже решил, куда поедешь в отпуск?",
    "На выходных мы с друзьями ходили в поход.",
    "Кофе без сахара мне нравится больше.",
    "Врач посоветовал мне больше гулять на свежем воздухе.",
    "Привет! Как у тебя дела?",
    "The weather is great today, so let's go for a walk in the park.",
    "I watched a new movie yesterday and really enjoyed it.",
    "I have two cats and a dog at home.",
    "What kind of music do you usually listen to in the evening?",
    "We are planning to go to the seaside at the end of the summer.",
    "Don't forget to buy bread and milk on your way home.",
    "My sister is studying medicine at the university.",
    "Sorry, I won't be able to make it to the meeting today.",
    "This restaurant is famous for its homemade pasta.",
    "The train is running about twenty minutes late.",
    "I like to read books before going to sleep.",
    "Thanks for your help, I couldn't have done it without you.",
    "It is very cold here in winter and there is a lot of snow.",
    "Let's meet at the subway entrance at six o'clock.",
    "He works as a programmer at a small company.",
    "Have you decided where to go on vacation yet?",
    "Last weekend my friends and I went hiking.",
    "I prefer my coffee without sugar.",
    "The doctor told me to spend more time outdoors.",
    "Hi! How are you doing?",
]
PROMPT_CONTEXT = Context((Turn("user", "Привет! Какие планы на выходные?"),))


def measure_scoring(lm: DecoderLM) -> tuple[float, float]:
    """(phrases per second, corpus perplexity) of one pass."""
    started = time.perf_counter()
    scores = score_texts(lm, SENTENCES, batch_size=16)
    elapsed = time.perf_counter() - started
    perplexity = math.exp(-sum(s.sum_logprob for s in scores) / sum(s.n_tokens for s in scores))
    return len(SENTENCES) / elapsed, perplexity


def measure_generation(lm: DecoderLM, new_tokens: int) -> float:
    """Greedy tokens per second at batch 1 (end of turn ignored, so every run has the same length)."""
    import torch

    prompt = prompt_format("ru").dialogue_prompt(PROMPT_CONTEXT)
    ids = torch.tensor([[lm.bos_id, *lm.encode(prompt)]], device=lm.device)
    started = time.perf_counter()
    out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                            pad_token_id=lm.pad_id, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - started)


def _cpu_model() -> str:
    """The processor's name: bf16 speed depends on it more than on anything else measured here."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(rows: list[dict], recommended: str, model: str) -> str:
    lines = [
        f"Decoder LM `{model}`: 40 sentences (20 ru + 20 en), batch 16; greedy generation at batch 1.",
        "",
        "| dtype | threads | scoring phrases/s | × fp32 | generation tok/s | × fp32 | perplexity | Δ vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " **(recommended)**" if r["setting"] == recommended else ""
        lines.append(
            f"| {r['dtype']}{mark} | {r['threads']} | {r['phrases_per_s']:.1f} | {r['scoring_vs_fp32']:.2f} | "
            f"{r['tokens_per_s']:.1f} | {r['generation_vs_fp32']:.2f} | {r['perplexity']:.2f} | "
            f"{100 * r['perplexity_rel_diff']:+.2f}% |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm.json")
    args = parser.parse_args()
    if "fp32" not in args.dtypes:
        parser.error("fp32 is the reference for the ratios; keep it in --dtypes")
    import torch

    load_average = os.getloadavg()[0]
    models: dict[str, DecoderLM] = {}
    load_s: dict[str, float] = {}
    for dtype in args.dtypes:
        started = time.perf_counter()
        models[dtype] = DecoderLM.from_cache(args.model, args.models_dir, LMOptions(dtype=dtype))
        load_s[dtype] = time.perf_counter() - started
    settings = [(dtype, threads) for dtype in args.dtypes for threads in args.threads]
    best: dict[tuple[str, int], dict[str, float]] = {s: {"phrases_per_s": 0.0, "tokens_per_s": 0.0} for s in settings}
    # Rounds interleave the settings so a burst of load from another process hits them all alike.
    for round_index in range(args.rounds + 1):
        for dtype, threads in settings:
            torch.set_num_threads(threads)
            lm = models[dtype]
            phrases_per_s, perplexity = measure_scoring(lm)
            tokens_per_s = measure_generation(lm, args.new_tokens if round_index else 2)
            if round_index == 0:  # warm-up
                continue
            record = best[(dtype, threads)]
            record["phrases_per_s"] = max(record["phrases_per_s"], phrases_per_s)
            record["tokens_per_s"] = max(record["tokens_per_s"], tokens_per_s)
            record["perplexity"] = perplexity
        print(f"round {round_index} done", flush=True)
    rows = [{"setting": f"{dtype}/{threads}", "dtype": dtype, "threads": threads, "load_s": load_s[dtype],
             "lm_id": models[dtype].lm_id, **best[(dtype, threads)]} for dtype, threads in settings]
    for row in rows:
        reference = next(r for r in rows if r["dtype"] == "fp32" and r["threads"] == row["threads"])
        row["scoring_vs_fp32"] = row["phrases_per_s"] / reference["phrases_per_s"]
        row["generation_vs_fp32"] = row["tokens_per_s"] / reference["tokens_per_s"]
        row["perplexity_rel_diff"] = row["perplexity"] / reference["perplexity"] - 1
        row["bank_minutes"] = {str(n): n / row["phrases_per_s"] / 60 for n in BANK_SIZES}
    eligible = [r for r in rows if abs(r["perplexity_rel_diff"]) <= QUALITY_TOLERANCE]
    recommended = max(eligible, key=lambda r: r["phrases_per_s"])
    result = {
        "model": args.model,
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16("cpu"),
                    "load_average_1m": load_average, "torch": torch.__version__},
        # What `[lm] dtype = "auto"` loads on this machine, to compare with the recommendation.
        "auto_dtype": resolve_dtype("auto", "cpu"),
        "sentences": len(SENTENCES),
        "new_tokens": args.new_tokens,
        "quality_tolerance": QUALITY_TOLERANCE,
        "rows": rows,
        "recommended": recommended["setting"],
    }
    atomic_write_json(args.out, result)
    print()
    print(markdown(rows, recommended["setting"], args.model))
    print()
    for n in BANK_SIZES:
        print(f"Scoring a bank of {n:,} phrases with {recommended['setting']}: "
              f"~{recommended['bank_minutes'][str(n)]:.0f} min")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
