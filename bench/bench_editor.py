"""Editor search latency on a synthetic 100k-phrase bank: `python -m bench.bench_editor [--phrases N]`.

Measures what one browse page costs (count + one page of rows) through the editor's HTTP stack
(FastAPI TestClient, logged in) for typical filters. Search by meaning and publishing are not measured
here (publishing is not built yet). Writes bench/results/editor.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from core.atomic import atomic_write_text
from core.bank.formats import PhraseRow
from core.bank.store import PhraseBank

_VOCABULARY = ("weather rain coffee music travel books football cats work movies sun tea dog city sea mountain "
               "погода дождь кофе музыка поездка книги футбол кошки работа кино солнце чай собака город море")
WORDS = _VOCABULARY.split()
QUERIES = ("/phrases", "/phrases?q=coffee", "/phrases?q=кофе&language=ru", "/phrases?status=draft",
           "/phrases?tag=t7", "/phrases?source=import&page=40", "/phrases?q=rain&status=approved&tag=t3")


def fill(bank: PhraseBank, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        language = rng.choice(("en", "ru"))
        words = [w for w in WORDS if (w.isascii()) == (language == "en")]
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + f" {i}."
        rows.append(PhraseRow(text=text.capitalize(), language=language, tags=(f"t{rng.randrange(20)}",),
                              status=rng.choice(("approved", "approved", "draft", "in_review")),
                              source=rng.choice(("editor", "import"))))
    report = bank.import_phrases(rows, who="bench")
    assert report.ok, report.errors[:3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phrases", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from dialog.editor.app import create_app
    from dialog.editor.users import Users

    with tempfile.TemporaryDirectory() as tmp, PhraseBank(Path(tmp) / "bank.db") as bank:
        started = time.perf_counter()
        fill(bank, args.phrases)
        fill_s = time.perf_counter() - started
        Users(bank).add("bench", "bench-password", "viewer")
        client = TestClient(create_app(bank, secure_cookies=False))
        page = client.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        client.post("/login", data={"name": "bench", "password": "bench-password", "csrf_token": token})
        results = {}
        for query in QUERIES:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                response = client.get(query)
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, (query, response.status_code)
            times.sort()
            results[query] = {"p50_ms": round(statistics.median(times), 1),
                              "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1)}
            print(f"{query:45} p50 {results[query]['p50_ms']:7.1f} ms   p95 {results[query]['p95_ms']:7.1f} ms")
    out = {"phrases": args.phrases, "fill_s": round(fill_s, 1), "repeats": args.repeats, "queries": results}
    path = Path(__file__).parent / "results" / "editor.json"
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps(out, ensure_ascii=False, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
