"""Generated candidates with their own LM features and graded labels (issue 17): annotator, PMI, grading, manifest."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from core.corpora import ContextPair
from core.types import SOURCE_BANK, SOURCE_GENERATED, Candidate, Context, Turn
from dialog.generation.grading import GradeConfig, PMIGrader, graded_up
from ranker.annotators import DEFAULT_ANNOTATORS, AnnotatorResources, build_annotators, describe
from ranker.dataset import BuilderConfig, build_ranking_dataset

from tiny_models import build_tiny_decoder


def test_generation_annotator_reads_the_generators_scores_and_gives_bank_phrases_nan() -> None:
    (annotator,) = build_annotators(names=["generation"])
    context = Context((Turn("user", "Any plans for the weekend?"),))
    pool = [Candidate("We could hike.", SOURCE_GENERATED, "en", stage_scores={"gen_logprob": -1.5, "gen_pmi": 0.7}),
            Candidate("Nothing much.", SOURCE_BANK, "en", phrase_id=3, stage_scores={"gen_logprob": -0.2}),
            Candidate("Sure.", SOURCE_GENERATED, "en", stage_scores={"gen_logprob": -math.inf})]
    out = annotator.annotate_pool(context, pool)
    assert out.shape == (3, 2) and out.dtype == np.float32
    assert out[0].tolist() == pytest.approx([-1.5, 0.7])
    assert np.isnan(out[1]).all(), "a bank phrase was never generated, whatever its stage scores"
    assert np.isnan(out[2]).all(), "non-finite or absent scores are missing, not a number"


def test_the_generation_annotator_is_opt_in_so_old_blenders_keep_their_features() -> None:
    from dialog.jobs.train_blender import annotator_names

    assert "generation" not in DEFAULT_ANNOTATORS
    assert [a.name for a in build_annotators()] == list(DEFAULT_ANNOTATORS)
    assert annotator_names() == list(DEFAULT_ANNOTATORS)
    assert annotator_names(generated=True) == [*DEFAULT_ANNOTATORS, "generation"]
    saved = [{"name": "surface"}, {"name": "generation"}]
    assert annotator_names(saved, generated=False) == ["surface", "generation"], "a saved dataset keeps its own"


def test_rule_needs_a_finite_pmi_above_every_retrieved_one() -> None:
    assert graded_up(1.2, [0.3, 1.0, math.nan], margin=0.0)
    assert not graded_up(0.9, [0.3, 1.0], margin=0.0)
    assert not graded_up(1.2, [0.3, 1.0], margin=0.5)
    assert not graded_up(math.nan, [0.3], margin=0.0)
    assert not graded_up(1.2, [], margin=0.0), "nothing to compare with: not graded up"
    with pytest.raises(ValueError, match="gold_label"):
        GradeConfig(generated_label=3.0).validate()


class TablePMI(PMIGrader):
    """The grading logic with PMIs from a table instead of an LM."""

    def __init__(self, table: dict[str, float], config: GradeConfig | None = None) -> None:
        super().__init__(lm=None, config=config or GradeConfig(against=2))  # type: ignore[arg-type]
        self.table, self.scored = table, []

    def _pmi(self, contexts, texts, phrase_ids, language):
        self.scored += list(texts)
        return [self.table[t] for t in texts]


def _pairs() -> list[ContextPair]:
    return [ContextPair(f"c{i}", f"toy:{i}", "en", Context((Turn("user", f"Do you like tea number {i}?"),)),
                        f"Yes, tea {i} every morning.", {}) for i in range(6)]


class Gen:
    """Generated candidates for contexts 0 and 1 only, with the generator's stage scores."""

    def __call__(self, contexts, language):
        return [[Candidate(f"generated for {c.last_text}", SOURCE_GENERATED, language,
                           stage_scores={"gen_logprob": -1.0 - i, "gen_pmi": 0.5 + i})] if i < 2 else []
                for i, c in enumerate(contexts)]


def retrieve(contexts, language, k):
    return [[Candidate(f"bank offer {j}", SOURCE_BANK, language, phrase_id=100 + j) for j in range(k)]
            for _ in contexts]


@pytest.fixture(scope="module")
def pools():
    bank = [Candidate(t, SOURCE_BANK, "en", phrase_id=i + 1) for i, t in enumerate(
        ["Hello!", "I love walks.", "Maybe later.", "What a day.", "No idea."])]
    annotators = build_annotators(AnnotatorResources(), names=["surface", "generation"])
    dataset = build_ranking_dataset(_pairs(), annotators, bank, generate=Gen(),
                                    config=BuilderConfig(k_retrieved=0, k_random=3, k_corpus=0, batch_size=6))
    return dataset, annotators


def test_grading_labels_a_generated_reply_that_beats_the_banks_offer_and_not_one_that_does_not(pools) -> None:
    dataset, _ = pools
    table = {"generated for Do you like tea number 0?": 2.0, "generated for Do you like tea number 1?": 0.4,
             "bank offer 0": 0.1, "bank offer 1": 0.9}
    grader = TablePMI(table)
    graded = grader(dataset, {p.context_id: (p.context, p.language) for p in _pairs()}, retrieve)
    labels = {t: float(y) for t, y, o in zip(graded.texts, graded.y, graded.origins, strict=True) if o != "random"}
    assert labels["generated for Do you like tea number 0?"] == 1.0, "beats both offers (0.1, 0.9)"
    assert labels["generated for Do you like tea number 1?"] == 0.0, "0.4 < 0.9: the bank offered better"
    golds = [y for y, o in zip(graded.y, graded.origins, strict=True) if o == "gold"]
    assert golds == [2.0] * 6, "the human's reply stays on top in every pool"
    assert set(grader.scored) == set(table), "only generated-bearing pools are scored: their offers and replies"
    again = TablePMI(table, GradeConfig(against=2, margin=1.0))
    again.cache = grader.cache
    stricter = again(dataset, {p.context_id: (p.context, p.language) for p in _pairs()}, retrieve)
    assert again.scored == [], "a grader sharing the PMI cache scores nothing twice"
    assert stricter.y[graded.y == 1.0].tolist() == [1.0], "2.0 > 0.9 + 1.0: still graded up at margin 1"
    record = grader.record()
    assert record["generated_labels"] == "graded" and record["rule"] == "pmi" and record["against"] == 2
    assert (record["contexts"], record["generated"], record["graded_up"]) == (2, 2, 1)
    assert (dataset.y == np.where(np.array(dataset.origins) == "gold", 1.0, 0.0)).all(), "the input is not mutated"


def test_human_labelled_groups_keep_their_labels(pools) -> None:
    dataset, _ = pools
    y = dataset.y.copy()
    a, b = dataset.offsets[2], dataset.offsets[3]
    y[a:b] = np.where(y[a:b] > 0, 3.0, 1.0)  # a labelled group: gold 3, the rest graded by people
    grader = TablePMI({"generated for Do you like tea number 0?": 2.0, "generated for Do you like tea number 1?": 0.0,
                       "bank offer 0": 0.1, "bank offer 1": 0.9})
    graded = grader(replace(dataset, y=y), {p.context_id: (p.context, p.language) for p in _pairs()}, retrieve)
    assert graded.y[a:b].tolist() == y[a:b].tolist() and grader.report.human_labelled == 1


def test_a_blender_trained_on_graded_pools_records_it_and_loads_with_the_generation_annotator(pools, tmp_path) -> None:
    from ranker.blender import Blender
    from ranker.train import BlenderTrainConfig, train_blender

    dataset, annotators = pools
    grader = TablePMI({"generated for Do you like tea number 0?": 2.0, "generated for Do you like tea number 1?": 0.4,
                       "bank offer 0": 0.1, "bank offer 1": 0.9})
    graded = grader(dataset, {p.context_id: (p.context, p.language) for p in _pairs()}, retrieve)
    graded = replace(graded, splits=["train", "train", "dev", "train", "dev", "train"])
    train_blender(graded, BlenderTrainConfig(rounds=3, early_stopping=0, num_threads=1, min_data_in_leaf=1),
                  tmp_path / "b", annotators=annotators, labels=grader.record())
    blender = Blender.load(tmp_path / "b")
    assert [a.name for a in blender.annotators] == ["surface", "generation"]
    assert blender.manifest.training["labels"]["graded_up"] == 1
    assert blender.manifest.annotators == describe(annotators)
    context = _pairs()[0].context
    pool = [Candidate("We could hike.", SOURCE_GENERATED, "en", stage_scores={"gen_logprob": -1.0, "gen_pmi": 1.0}),
            Candidate("No idea.", SOURCE_BANK, "en", phrase_id=5)]
    features = blender.features(context, pool)
    assert features[0, -1] == pytest.approx(1.0) and np.isnan(features[1, -2:]).all()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    import torch

    from core.lm.wrapper import DecoderLM

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield DecoderLM.from_dir(build_tiny_decoder(tmp_path_factory.mktemp("lm") / "lm"))
    torch.set_num_threads(before)


def test_generated_candidates_carry_pmi_from_one_padded_unconditional_pass(tiny_lm) -> None:
    import time

    from core.config import GenerationConfig
    from core.lm.scoring import score_token_ids
    from dialog.generation.filters import FilterConfig, ReplyFilter
    from dialog.generation.generator import LMGenerator

    sequences = [(5, 9, 11, 4), (7,), ()]
    batched = [s.mean_logprob for s in score_token_ids(tiny_lm, sequences)]
    alone = [score_token_ids(tiny_lm, [s])[0].mean_logprob for s in sequences[:2]]
    assert batched[:2] == pytest.approx(alone, abs=1e-4), "right padding must not change a sequence's score"
    assert math.isnan(batched[2])
    config = replace(GenerationConfig(), n_candidates=3, max_new_tokens=6, keep_truncated=True, demonstrations=0)
    reply_filter = ReplyFilter(FilterConfig(check_language=False), blocklists=[])
    context = Context((Turn("user", "Do you like green tea?"),))
    # Off by default: the extra pass is paid only when a blender reads gen_pmi.
    plain = LMGenerator(tiny_lm, config, reply_filter).candidates(context, "en", 3, time.monotonic() + 20)
    assert plain and all("gen_pmi" not in c.stage_scores for c in plain)
    generator = LMGenerator(tiny_lm, replace(config, pmi=True), reply_filter)
    found = generator.candidates(context, "en", 3, time.monotonic() + 20)
    assert found, "the tiny model produced no reply that passed the filters"
    for cand in found:
        tokens = tiny_lm.encode(cand.text)
        assert math.isfinite(cand.stage_scores["gen_pmi"])
        assert cand.stage_scores["gen_pmi"] != pytest.approx(cand.stage_scores["gen_logprob"]), "uncond subtracted"
        assert tokens, cand.text


def test_the_pmi_grader_scores_with_a_real_lm_and_reuses_stored_bank_scores(pools, tiny_lm) -> None:
    from core.lm.scoring import LMScore

    dataset, _ = pools
    stored = {100: LMScore(-50.0, -99.0, 2)}  # absurd on purpose: reused, the offer's PMI becomes huge
    grader = PMIGrader(tiny_lm, GradeConfig(against=2), stored)
    graded = grader(dataset, {p.context_id: (p.context, p.language) for p in _pairs()}, retrieve)
    gen = [y for y, o in zip(graded.y, graded.origins, strict=True) if o == "generated"]
    assert len(gen) == 2 and gen == [0.0, 0.0], "no generated reply beats an offer with PMI ~ +95"
    assert all(math.isfinite(e["pmi"]) for e in grader.record()["examples"])
    assert all(e["best_retrieved_pmi"] > 50 for e in grader.record()["examples"])


def test_the_blender_job_trains_with_generated_candidates_graded_and_reuses_the_data(tmp_path) -> None:
    """`repliq train blender --generate-contexts N --generated-labels pmi`, with a fake generator and teacher."""
    import json

    from core.bank.store import PhraseBank
    from core.job_configs import BlenderTrainConfig, IndexBuildConfig
    from core.training_corpora import BlenderCorpora
    from dialog.jobs.index_build import index_build
    from dialog.jobs.train_blender import LABELS_NAME, retrain_from_saved_data, train_workspace_blender
    from ranker.blender import read_blender_manifest
    from ranker.training_data import data_dir_of

    from tiny_models import build_tiny_encoder
    from workspace import make_settings

    models = tmp_path / "models"
    build_tiny_encoder(models / "tiny-encoder")
    settings = make_settings(tmp_path / "home", models)
    settings = replace(settings, encoder=replace(settings.encoder, name=str(models / "tiny-encoder"), adapter="none",
                                                 backend="torch", num_threads=1, batch_size=8),
                       ranker=replace(settings.ranker, specificity="none"))
    settings.home.mkdir(parents=True)
    with PhraseBank(settings.bank_path) as bank:
        for i in range(30):
            bank.add(f"bank phrase {i} about {'tea' if i % 2 else 'walks'}", "en", status="approved")
    index_build(settings, IndexBuildConfig(), progress=lambda *_: None)
    rows = [{"id": f"d:{i}", "language": "en", "turns": [{"speaker": "AB"[j % 2], "text": f"turn {j} of talk {i}"}
                                                         for j in range(4)]} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpora = BlenderCorpora(chitchat_conversations=0, jsonl=[tmp_path / "d.jsonl"], max_pairs_per_language=60)

    class Teacher(TablePMI):
        def _pmi(self, contexts, texts, phrase_ids, language):  # generated replies of even talks win
            return [3.0 if t.startswith("generated") and int(t.split()[-1]) % 2 == 0 else 0.5 for t in texts]

    def generate(contexts, language):
        return [[Candidate(f"generated {c.last_text}", SOURCE_GENERATED, language,
                           stage_scores={"gen_logprob": -1.0, "gen_pmi": 1.0})] for c in contexts]

    grader = Teacher({}, GradeConfig(against=3))
    out = tmp_path / "blender"
    train_workspace_blender(settings, corpora, BlenderTrainConfig(rounds=3, early_stopping=0, num_threads=1,
                                                                  min_data_in_leaf=1),
                            out_dir=out, generate=generate, grade=grader)
    manifest = read_blender_manifest(out)
    assert manifest.annotators[-1]["name"] == "generation" and "gen_pmi" in manifest.feature_names
    labels = manifest.training["labels"]
    assert labels["generated_labels"] == "graded" and 0 < labels["graded_up"] < labels["generated"]
    assert json.loads((data_dir_of(out) / LABELS_NAME).read_text(encoding="utf-8")) == labels
    retrain_from_saved_data(settings, BlenderTrainConfig(rounds=2, early_stopping=0, num_threads=1,
                                                         min_data_in_leaf=1), out)
    assert read_blender_manifest(out).training["labels"] == labels, "--reuse-data keeps the record"
