"""Editor search latency on a synthetic 100k-phrase bank: `python -m bench.bench_editor [--phrases N]`.

Three measurements over one synthetic bank (half Russian, half English; ~2/3 approved):

* **browse**: one page of the phrase list (count + 50 rows) through the editor's HTTP stack (FastAPI
  TestClient, logged in) for typical filters;
* **search by meaning**: the same page with ``meaning=...``: the real serving encoder (e5-small + its
  query adapter) encodes the query, the bank index (HNSW above 50k phrases per language) is searched;
* **publish**: 100 approved phrases edited, then ``repliq.v1.Admin/Publish`` over real gRPC against a
  server running the default pipeline: incremental build (100 phrases re-encoded, a new snapshot written),
  verification, swap. Timed from the call to its answer; a thread keeps sending ``Respond`` during one
  extra round and every failure is counted.

The bank's *passage* vectors are random unit vectors under the real encoder's identity: encoding 100k
synthetic phrases would take tens of minutes on 2 shared cores and changes neither what a search costs
(one query encoding + one index search) nor what a publish costs (the 100 changed phrases are encoded by
the real encoder). Random vectors are the hard case for HNSW, so search numbers are if anything high.
Writes bench/results/editor.json and the editor section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import markdown_table, write_results
from core.bank.formats import PhraseRow
from core.bank.store import PhraseBank

_VOCABULARY = ("weather rain coffee music travel books football cats work movies sun tea dog city sea mountain "
               "погода дождь кофе музыка поездка книги футбол кошки работа кино солнце чай собака город море")
WORDS = _VOCABULARY.split()
QUERIES = ("/phrases", "/phrases?q=coffee", "/phrases?q=кофе&language=ru", "/phrases?status=draft",
           "/phrases?tag=t7", "/phrases?source=import&page=40", "/phrases?q=rain&status=approved&tag=t3")
MEANINGS = ("/phrases?meaning=it+is+raining+all+day", "/phrases?meaning=what+music+do+you+like&language=en",
            "/phrases?meaning=люблю+пить+кофе+утром", "/phrases?meaning=поедем+на+море&language=ru",
            "/phrases?meaning=my+cat+sleeps+all+day")
PASSWORD = "bench-password"


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


class RandomPassages:
    """The real encoder's identity (model id, weights, dimension) with random unit passage vectors."""

    def __init__(self, encoder: Any, seed: int = 0) -> None:
        self.manifest, self.identity, self.dim = encoder.manifest, encoder.identity, encoder.dim
        self._rng = np.random.default_rng(seed)
        self.encode_queries = encoder.encode_queries  # real queries (a compressed index tunes on a sample)

    def encode_passages(self, texts: list[str], progress: Any = None) -> np.ndarray:
        vectors = self._rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _timed(client: Any, queries: tuple[str, ...], repeats: int) -> dict[str, dict[str, float]]:
    results = {}
    for query in queries:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            response = client.get(query)
            times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, (query, response.status_code)
            assert "unavailable" not in response.text, response.text[-500:]
        times.sort()
        results[query] = {"p50_ms": round(statistics.median(times), 1),
                          "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1)}
        print(f"{query:55} p50 {results[query]['p50_ms']:7.1f} ms   p95 {results[query]['p95_ms']:7.1f} ms",
              flush=True)
    return results


def _client(bank: PhraseBank, settings: Any) -> Any:
    from fastapi.testclient import TestClient

    from dialog.editor.app import create_app

    client = TestClient(create_app(bank, settings, secure_cookies=False))
    token = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/login", data={"name": "bench", "password": PASSWORD, "csrf_token": token})
    return client


def _edit(bank: PhraseBank, ids: list[int], tag: str) -> None:
    for pid in ids:
        bank.update(pid, who="bench", text=f"{bank.get(pid).text.rstrip('.')} {tag}.")


def _publish_rounds(settings: Any, bank: PhraseBank, rounds: int, changes: int) -> dict[str, Any]:
    """Publish ``changes`` edited phrases ``rounds`` times idle, then once more under Respond load."""
    from dialog.serving.admin import admin_service
    from dialog.serving.admin_client import AdminClient
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.client import ChatClient
    from dialog.serving.server import start_server

    assembled = build_pipeline(settings)
    running = start_server(assembled.pipeline, settings.server, 5, admin=admin_service(settings, assembled))
    admin = AdminClient.for_workspace("127.0.0.1", running.port, settings.home, timeout_s=600)
    approved = [p.id for p in bank.phrases(status="approved")]
    rng = random.Random(1)
    timings, sent, failures, stop = [], [0], [], threading.Event()

    def load() -> None:
        chat = ChatClient("127.0.0.1", running.port, timeout_s=30)
        while not stop.is_set():
            try:
                chat.respond([("user", ("Any plans for the weekend?", "Какая погода завтра?")[sent[0] % 2])])
                sent[0] += 1
            except Exception as exc:  # every failed request counts
                failures.append(repr(exc)[:200])
        chat.close()

    worker = threading.Thread(target=load)
    try:
        for round_no in range(rounds + 1):
            if round_no == rounds:
                worker.start()
                time.sleep(1.0)
            _edit(bank, rng.sample(approved, changes), f"r{round_no}")
            t0 = time.perf_counter()
            reply = admin.publish("bench")
            seconds = time.perf_counter() - t0
            assert reply.changed and reply.edited == changes, reply
            timings.append({"seconds": round(seconds, 2), "build_s": round(reply.build_seconds, 2),
                            "swap_s": round(reply.swap_seconds, 3), "under_load": round_no == rounds})
            print(f"publish {changes} changed: {seconds:.2f} s (build {reply.build_seconds:.2f} s, verify+swap "
                  f"{reply.swap_seconds:.3f} s){' under load' if round_no == rounds else ''}", flush=True)
        time.sleep(1.0)
    finally:
        stop.set()
        if worker.is_alive():
            worker.join(30)
        admin.close()
        running.stop(grace=2.0)
        assembled.close()
    return {"changes": changes, "rounds": timings, "load_requests": sent[0], "load_failures": len(failures),
            "failure_examples": failures[:3]}


def _workspace(tmp: Path) -> Any:
    from core.config import default_models_dir, load_settings

    settings = load_settings(environ={"REPLIQ_HOME": str(tmp / "home"), "REPLIQ_MODELS": str(default_models_dir())})
    return replace(settings, server=replace(settings.server, port=0),
                   generation=replace(settings.generation, mode="off"))


def _markdown(out: dict[str, Any]) -> str:
    rows = [["browse " + q, v["p50_ms"], v["p95_ms"]] for q, v in out["browse"].items()]
    rows += [["meaning " + q.split("meaning=")[1], v["p50_ms"], v["p95_ms"]] for q, v in out["meaning"].items()]
    idle = [r["seconds"] for r in out["publish"]["rounds"] if not r["under_load"]]
    loaded = [r["seconds"] for r in out["publish"]["rounds"] if r["under_load"]]
    pub = out["publish"]
    return (f"## Editor: browse, search by meaning, publish ({out['phrases']:,} phrases)\n\n"
            f"`python -m bench.bench_editor` — one editor page through the HTTP stack (logged in), p50/p95 "
            f"over {out['repeats']} requests; search by meaning encodes the query with {out['encoder']} and "
            f"searches the bank index (bank vectors random, see the module docstring). First search by meaning "
            f"(loads encoder + index): {out['meaning_first_s']} s.\n\n"
            + markdown_table(["page", "p50 ms", "p95 ms"], rows)
            + f"\n\nPublish of {pub['changes']} changed phrases over gRPC (`repliq.v1.Admin/Publish`, incremental "
            f"build + verify + swap, default serving pipeline): idle {', '.join(f'{s:.2f}' for s in idle)} s; "
            f"while a client kept sending Respond: {', '.join(f'{s:.2f}' for s in loaded)} s, "
            f"{pub['load_requests']} requests, {pub['load_failures']} failed. Target: ≤ 5 s on 2 cores; "
            "search p95 ≤ 150 ms.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phrases", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--publish-rounds", type=int, default=3)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--no-write", action="store_true", help="print only (a quick check of the benchmark itself)")
    args = parser.parse_args()
    from dialog.editor.users import Users
    from retriever.bank_index import build_index
    from retriever.encoder import Encoder

    with tempfile.TemporaryDirectory() as tmp:
        settings = _workspace(Path(tmp))
        with PhraseBank(settings.bank_path) as bank:
            started = time.perf_counter()
            fill(bank, args.phrases)
            fill_s = time.perf_counter() - started
            Users(bank).add("bench", PASSWORD, "viewer")
            encoder = Encoder.from_config(settings)
            started = time.perf_counter()
            build_index(bank, RandomPassages(encoder), settings)  # type: ignore[arg-type]
            index_s = time.perf_counter() - started
            client = _client(bank, settings)
            browse = _timed(client, QUERIES, args.repeats)
            t0 = time.perf_counter()
            assert client.get(MEANINGS[0]).status_code == 200
            first = round(time.perf_counter() - t0, 2)
            meaning = _timed(client, MEANINGS, args.repeats)
            client.close()
            publish = _publish_rounds(settings, bank, args.publish_rounds, args.changes)
    out = {"phrases": args.phrases, "fill_s": round(fill_s, 1), "index_s": round(index_s, 1),
           "repeats": args.repeats, "encoder": encoder.identity, "browse": browse, "meaning_first_s": first,
           "meaning": meaning, "publish": publish}
    if args.no_write:
        print(_markdown(out))
        return
    write_results("editor", out, _markdown(out))
    print("wrote bench/results/editor.json and docs/benchmarks.md")


if __name__ == "__main__":
    main()
