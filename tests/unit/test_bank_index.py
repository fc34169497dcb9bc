"""The persisted bank index and the bank retriever, on a tiny random encoder and an in-memory bank."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from core.config import Settings
from core.types import Context, Turn
from retriever import bank_index as bank_index_module
from retriever.bank_index import (
    BankIndex,
    BankIndexError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    PhraseInfo,
    StaleIndexError,
    build_index,
    load_index,
    update_index,
)
from retriever.bank_retriever import BankRetriever
from retriever.encoder import Encoder
from retriever.index import VectorIndex
from retriever.microbatch import MicroBatcher

from tiny_models import build_tiny_encoder

EN_WORDS = ["weather", "coffee", "music", "travel", "books", "football", "cats", "work", "movies", "rain"]
RU_WORDS = ["погода", "кофе", "музыка", "поездка", "книги", "футбол", "кошки", "работа", "кино", "дождь"]


@dataclass
class FakePhrase:
    id: int
    text: str
    language: str
    tags: tuple[str, ...] = ()
    status: str = "approved"
    version: int = 1


class FakeBank:
    """Same reading interface as core.bank.store.PhraseBank; every change is one revision."""

    def __init__(self) -> None:
        self._phrases: dict[int, FakePhrase] = {}
        self._log: list[int] = []

    @property
    def revision(self) -> int:
        return len(self._log)

    def add(self, text: str, language: str, status: str = "approved") -> int:
        pid = len(self._phrases) + 1
        self._phrases[pid] = FakePhrase(pid, text, language, status=status)
        self._log.append(pid)
        return pid

    def update(self, pid: int, **changes: object) -> None:
        old = self._phrases[pid]
        self._phrases[pid] = replace(old, **changes, version=old.version + 1)  # type: ignore[arg-type]
        self._log.append(pid)

    def phrases(self, *, status: str | None = None, language: str | None = None) -> list[FakePhrase]:
        return [p for p in self._phrases.values()
                if (status is None or p.status == status) and (language is None or p.language == language)]

    def changed_since(self, revision: int) -> list[int]:
        return sorted(set(self._log[revision:]))

    def get(self, pid: int) -> FakePhrase:
        return self._phrases[pid]


def make_bank() -> FakeBank:
    bank = FakeBank()
    for i, (en, ru) in enumerate(zip(EN_WORDS, RU_WORDS, strict=True)):
        bank.add(f"i really like {en} number {i}", "en")
        bank.add(f"мне нравится {ru} номер {i}", "ru")
        bank.add(f"what about {en}, draft {i}?", "en", status="draft")
    return bank


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Encoder]:
    root = tmp_path_factory.mktemp("encoders")
    return {
        "main": Encoder(build_tiny_encoder(root / "main", seed=0), device="cpu"),
        "retrained": Encoder(build_tiny_encoder(root / "retrained", seed=1), device="cpu"),
        "other": Encoder(build_tiny_encoder(root / "other", model_id="other-encoder", seed=2), device="cpu"),
    }


@pytest.fixture
def encoder(encoders: dict[str, Encoder]) -> Encoder:
    return encoders["main"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", models_dir=tmp_path / "models")


def snapshots(settings: Settings, encoder: Encoder) -> list[str]:
    return sorted(p.name for p in (settings.indexes_dir / encoder.manifest.model_id).iterdir()
                  if p.name.startswith((".snap", "snap")))


def current(settings: Settings, encoder: Encoder) -> str:
    return (settings.indexes_dir / encoder.manifest.model_id / "CURRENT").read_text().strip()


def all_results(index: BankIndex, encoder: Encoder, bank: FakeBank) -> dict[str, list[list[tuple[int, float]]]]:
    texts = [p.text for p in bank.phrases()] + ["something else entirely", "совсем другое"]
    vectors = encoder.encode_queries(texts)
    return {lang: index.search(vectors, lang, 5) for lang in ("en", "ru")}


def test_build_then_load_searches_the_language_shard(settings: Settings, encoder: Encoder) -> None:
    bank = make_bank()
    seen: list[tuple[int, int]] = []
    manifest = build_index(bank, encoder, settings, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (20, 20)
    assert manifest.bank_revision == bank.revision and manifest.counts == {"en": 10, "ru": 10}
    assert manifest.encoder_id == "tiny-random-encoder" and manifest.dim == encoder.dim
    assert manifest.encoder_weights_sha256 == encoder.manifest.weights_sha256
    assert manifest.faiss_version and manifest.created and len(manifest.checksum) == 64
    assert current(settings, encoder) == manifest.snapshot

    index = load_index(settings, encoder, bank)
    assert index.languages == ("en", "ru") and len(index) == 20
    for phrase in bank.phrases(status="approved"):
        hits = index.search(encoder.encode_passages([phrase.text]), phrase.language, 3)[0]
        assert hits[0][0] == phrase.id and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert all(bank.get(pid).language == phrase.language for pid, _ in hits)
    drafts = {p.id for p in bank.phrases(status="draft")}
    found = {pid for rows in all_results(index, encoder, bank).values() for row in rows for pid, _ in row}
    assert found and not found & drafts
    assert index.search(encoder.encode_queries(["hi"]), "de", 3) == [[]]


def test_incremental_update_re_encodes_only_changes_and_equals_a_full_build(
        settings: Settings, encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bank = make_bank()
    build_index(bank, encoder, settings)
    bank.add("a brand new english phrase", "en")
    bank.add("совершенно новая фраза", "ru")
    bank.update(1, text="i really like weather a lot")  # edited text
    bank.update(4, text="i now speak russian", language="ru")  # moved shard
    bank.update(2, status="retired")
    bank.update(5, status="draft")
    bank.update(7, tags=("greeting",))  # no text change: no re-encoding
    bank.update(3, status="approved")  # a draft approved: added
    encoded: list[str] = []
    original = encoder.encode_passages
    monkeypatch.setattr(encoder, "encode_passages",
                        lambda texts, progress=None: (encoded.extend(texts), original(texts, progress))[1])

    report = update_index(bank, encoder, settings)
    assert (report.added, report.edited, report.removed, report.unchanged) == (3, 2, 2, 1)
    assert not report.full_rebuild and report.manifest.bank_revision == bank.revision
    assert sorted(encoded) == sorted(bank.get(pid).text for pid in (1, 3, 4, 31, 32))
    incremental = load_index(settings, encoder, bank)

    fresh_settings = Settings(home=tmp_path / "fresh", models_dir=settings.models_dir)
    fresh_manifest = build_index(bank, encoder, fresh_settings)
    fresh = load_index(fresh_settings, encoder, bank)
    assert incremental.manifest.counts == fresh_manifest.counts == {"en": 11, "ru": 10}
    assert incremental.manifest.content_sha256 == fresh_manifest.content_sha256
    got, expected = all_results(incremental, encoder, bank), all_results(fresh, encoder, bank)
    for lang in ("en", "ru"):
        assert [[pid for pid, _ in row] for row in got[lang]] == [[pid for pid, _ in row] for row in expected[lang]]
        assert np.allclose([[s for _, s in row] for row in got[lang]],
                           [[s for _, s in row] for row in expected[lang]], atol=1e-5)

    encoded.clear()
    again = update_index(bank, encoder, settings)
    assert again.reason == "up to date" and encoded == [] and again.manifest == report.manifest


def test_update_without_an_index_builds_one(settings: Settings, encoder: Encoder) -> None:
    bank = make_bank()
    report = update_index(bank, encoder, settings)
    assert report.full_rebuild and report.added == 20
    assert load_index(settings, encoder, bank).manifest.counts == {"en": 10, "ru": 10}


def test_update_repairs_what_history_misses_and_rebuilds_for_an_older_bank(
        settings: Settings, encoder: Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    bank = make_bank()
    older = copy.deepcopy(bank)
    build_index(bank, encoder, settings)
    bank.update(1, text="history will not mention this edit")
    monkeypatch.setattr(bank, "changed_since", lambda revision: [])
    report = update_index(bank, encoder, settings)
    assert (report.edited, report.full_rebuild) == (1, False)
    index = load_index(settings, encoder, bank)
    top = index.search(encoder.encode_passages(["history will not mention this edit"]), "en", 1)[0][0]
    assert top[0] == 1 and top[1] == pytest.approx(1.0, abs=1e-5)
    rebuilt = update_index(older, encoder, settings)
    assert rebuilt.full_rebuild and "older" in rebuilt.reason
    load_index(settings, encoder, older)


def test_missing_stale_and_foreign_indexes_are_refused(settings: Settings, encoders: dict[str, Encoder]) -> None:
    bank, encoder = make_bank(), encoders["main"]
    with pytest.raises(IndexNotFoundError, match="repliq index build"):
        load_index(settings, encoder, bank)
    build_index(bank, encoder, settings)
    with pytest.raises(IndexMismatchError, match=r"repliq index build") as retrained:
        load_index(settings, encoders["retrained"], bank)
    assert encoders["retrained"].identity in str(retrained.value)
    with pytest.raises(IndexNotFoundError, match="tiny-random-encoder"):
        load_index(settings, encoders["other"], bank)
    bank.add("one more phrase", "en")
    with pytest.raises(StaleIndexError, match=r"revision 30.*revision 31.*repliq index build"):
        load_index(settings, encoder, bank)
    other_bank = make_bank()
    other_bank.update(1, text="same revision count, different text")
    build_index(other_bank, encoder, settings)
    with pytest.raises(StaleIndexError, match="approved phrases"):
        load_index(settings, encoder, make_bank_at(other_bank.revision))


def make_bank_at(revision: int) -> FakeBank:
    bank = make_bank()
    while bank.revision < revision:
        bank.update(1, tags=(f"t{bank.revision}",))
    return bank


def test_corrupted_or_tampered_index_is_refused(settings: Settings, encoder: Encoder) -> None:
    bank = make_bank()
    manifest = build_index(bank, encoder, settings)
    snapshot = settings.indexes_dir / encoder.manifest.model_id / manifest.snapshot
    shard_file = snapshot / "shards" / "ru" / "index.faiss"
    original = shard_file.read_bytes()
    blob = bytearray(original)
    blob[-5] ^= 0x01
    shard_file.write_bytes(bytes(blob))
    with pytest.raises(IndexCorruptError, match="checksum"):
        load_index(settings, encoder, bank)
    shard_file.write_bytes(original)
    load_index(settings, encoder, bank)
    manifest_file = snapshot / "manifest.json"
    data = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**data, "dim": 16}))
    with pytest.raises(IndexMismatchError, match="dimension 16"):
        load_index(settings, encoder, bank)
    manifest_file.write_text(json.dumps({**data, "counts": {"en": 99}, "phrases_sha256": "0" * 64}))
    with pytest.raises(BankIndexError, match="checksum"):
        load_index(settings, encoder, bank)


def test_crash_mid_build_leaves_the_live_snapshot(settings: Settings, encoder: Encoder,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bank = make_bank()
    before_change = copy.deepcopy(bank)
    first = build_index(bank, encoder, settings)
    bank.add("this phrase arrives before the crash", "en")
    calls = {"n": 0}
    real_save = VectorIndex.save

    def crashing_save(self: VectorIndex, directory: Path) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real_save(self, directory)

    monkeypatch.setattr(VectorIndex, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        build_index(bank, encoder, settings)
    assert calls["n"] == 2
    assert current(settings, encoder) == first.snapshot
    assert snapshots(settings, encoder) == [first.snapshot]
    assert load_index(settings, encoder, before_change).manifest == first
    monkeypatch.setattr(VectorIndex, "save", real_save)
    assert update_index(bank, encoder, settings).added == 1


def test_old_snapshots_are_pruned(settings: Settings, encoder: Encoder) -> None:
    bank = make_bank()
    names = []
    for i in range(4):
        bank.add(f"extra phrase {i}", "en")
        names.append(build_index(bank, encoder, settings).snapshot)
        time.sleep(0.002)
    assert snapshots(settings, encoder) == sorted(names[-2:])
    assert current(settings, encoder) == names[-1]


def test_bank_retriever_candidates(settings: Settings, encoder: Encoder) -> None:
    bank = make_bank()
    build_index(bank, encoder, settings)
    index = load_index(settings, encoder, bank)
    retriever = BankRetriever(encoder, index, bank, context_turns=2)
    context = Context((Turn("user", "hello"), Turn("bot", "hi!"), Turn("user", "do you like coffee?")))
    far = time.monotonic() + 60
    got = retriever.candidates(context, "en", 4, far)
    expected = index.search(encoder.encode_queries(["hi!\ndo you like coffee?"]), "en", 4)[0]
    assert [(c.phrase_id, c.score) for c in got] == [(pid, pytest.approx(s)) for pid, s in expected]
    assert all(c.source == "bank" and c.language == "en" and c.text == bank.get(c.phrase_id).text for c in got)
    assert [c.stage_scores["retrieval_rank"] for c in got] == [1.0, 2.0, 3.0, 4.0]
    assert all(c.stage_scores["retrieval"] == c.score for c in got)
    assert retriever.candidates(context, "en", 4, time.monotonic() - 1) == []
    assert retriever.candidates(Context(()), "en", 4, far) == []
    assert retriever.is_current()

    contexts = [context, Context((Turn("user", "как погода?"),)), Context(())]
    many = retriever.retrieve_many(contexts, "ru", 3)
    assert many[2] == [] and all(c.language == "ru" for c in many[1])
    assert [c.phrase_id for c in many[0]] == [c.phrase_id for c in retriever.candidates(context, "ru", 3, far)]
    with MicroBatcher(encoder.encode_queries, max_wait_ms=1) as batcher:
        batched = BankRetriever(encoder, index, bank, 2, microbatcher=batcher)
        assert [c.phrase_id for c in batched.candidates(context, "en", 4, far)] == [c.phrase_id for c in got]

    top = got[0].phrase_id
    assert top is not None
    statuses = {pid: PhraseInfo(p.text, p.language, "retired" if pid == top else "approved")
                for pid, p in ((p.id, p) for p in bank.phrases(status="approved"))}
    shards = {lang: index.shard(lang) for lang in index.languages}
    guarded = BankRetriever(encoder, BankIndex(index.manifest, shards, statuses), bank, 2)
    assert top not in [c.phrase_id for c in guarded.candidates(context, "en", 4, far)]
    bank.add("new", "en")
    assert not retriever.is_current()


def test_errors_share_one_base() -> None:
    assert issubclass(StaleIndexError, BankIndexError) and issubclass(IndexMismatchError, BankIndexError)
    assert bank_index_module.BUILD_HINT == "run `repliq index build`"


def test_real_phrase_bank_build_update_load(settings: Settings, encoder: Encoder, tmp_path: Path) -> None:
    from core.bank.store import PhraseBank

    with PhraseBank(tmp_path / "bank.sqlite") as bank:
        ids = [bank.add(f"i like {word} a lot", "en").id for word in EN_WORDS[:5]]
        ids += [bank.add(f"я люблю {word}", "ru").id for word in RU_WORDS[:5]]
        build_index(bank, encoder, settings)
        assert load_index(settings, encoder, bank).manifest.counts == {"en": 5, "ru": 5}
        bank.update(ids[0], who="test", text="i like weather even more")
        bank.retire(ids[5], who="test")
        with pytest.raises(StaleIndexError):
            load_index(settings, encoder, bank)
        report = update_index(bank, encoder, settings)
        assert (report.added, report.edited, report.removed) == (0, 1, 1)
        index = load_index(settings, encoder, bank)
        hits = index.search(encoder.encode_passages(["i like weather even more"]), "en", 1)[0]
        assert hits[0][0] == ids[0] and index.manifest.counts == {"en": 5, "ru": 4}


def shard_ids(index: BankIndex, language: str) -> set[int]:
    shard = index.shard(language)
    return set() if shard is None else set(shard.ids.tolist())


@pytest.mark.parametrize("history_knows", [True, False])
def test_a_language_change_without_a_text_change_moves_the_phrase_to_the_other_shard(
        settings: Settings, encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        history_knows: bool) -> None:
    bank = make_bank()
    build_index(bank, encoder, settings)
    text = bank.get(4).text
    bank.update(4, language="ru")  # mislabelled phrase fixed: same text, other language
    with pytest.raises(StaleIndexError):
        load_index(settings, encoder, bank)
    if not history_knows:
        monkeypatch.setattr(bank, "changed_since", lambda revision: [])
    report = update_index(bank, encoder, settings)
    assert (report.added, report.edited, report.removed) == (0, 1, 0) and not report.full_rebuild
    index = load_index(settings, encoder, bank)
    assert 4 in shard_ids(index, "ru") and 4 not in shard_ids(index, "en")
    assert index.manifest.counts == {"en": 9, "ru": 11}
    assert index.phrase(4) == PhraseInfo(text, "ru", "approved")
    hits = index.search(encoder.encode_passages([text]), "ru", 1)[0]
    assert hits[0][0] == 4 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert all(pid != 4 for pid, _ in index.search(encoder.encode_passages([text]), "en", 10)[0])
    fresh = build_index(bank, encoder, Settings(home=tmp_path / "fresh", models_dir=settings.models_dir))
    assert index.manifest.content_sha256 == fresh.content_sha256


def test_an_index_whose_phrase_languages_differ_from_the_bank_is_refused(settings: Settings,
                                                                         encoder: Encoder) -> None:
    relabelled = make_bank()
    relabelled.update(4, language="ru")
    build_index(relabelled, encoder, settings)
    same_revision = make_bank_at(relabelled.revision)  # phrase 4 still English, texts all equal
    assert [p.text for p in same_revision.phrases()] == [p.text for p in relabelled.phrases()]
    with pytest.raises(StaleIndexError, match="approved phrases"):
        load_index(settings, encoder, same_revision)


def test_real_phrase_bank_language_fix_reaches_the_index(settings: Settings, encoder: Encoder,
                                                         tmp_path: Path) -> None:
    from core.bank.store import PhraseBank

    with PhraseBank(tmp_path / "bank.sqlite") as bank:
        mislabelled = bank.add("я люблю дождь", "en").id
        bank.add("i like rain", "en")
        build_index(bank, encoder, settings)
        bank.update(mislabelled, who="test", language="ru")
        with pytest.raises(StaleIndexError):
            load_index(settings, encoder, bank)
        report = update_index(bank, encoder, settings)
        assert (report.added, report.edited, report.removed) == (0, 1, 0)
        index = load_index(settings, encoder, bank)
        assert shard_ids(index, "ru") == {mislabelled} and index.manifest.counts == {"en": 1, "ru": 1}
