"""The executor seam without Ray: the local executor, the config's refusals and the jobs' shared flags."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from core.executor import ExecutorConfig, LocalExecutor, make_executor, run_batches
from dialog.cli.executor import executor_config
from dialog.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


class Counting:
    """A worker factory that counts its loads (a model load is what the executor must not repeat)."""

    def __init__(self) -> None:
        self.loads = 0

    def __call__(self):
        self.loads += 1
        return lambda batch: [len(text) for text in batch]


def test_local_executor_loads_once_in_order_and_never_for_no_work() -> None:
    factory = Counting()
    batches = [["a", "bb"], ["ccc"], ["dddd", "e", "ff"]]
    assert list(LocalExecutor().map(factory, batches)) == [(0, [1, 2]), (1, [3]), (2, [4, 1, 2])]
    assert factory.loads == 1
    assert list(LocalExecutor().map(factory, [])) == [] and factory.loads == 1
    written = []
    run_batches(LocalExecutor(), factory, batches, lambda batch, results: written.append((batch, results)))
    assert written[2] == (["dddd", "e", "ff"], [4, 1, 2])


def test_a_worker_that_drops_results_is_refused() -> None:
    with pytest.raises(RuntimeError, match="batch 0: the worker returned 1 results for 2 items"):
        list(LocalExecutor().map(lambda: lambda batch: batch[:1], [["a", "b"]]))


@pytest.mark.parametrize(("config", "message"), [
    (ExecutorConfig(kind="spark"), "executor must be one of local, ray"),
    (ExecutorConfig(kind="ray", actors=0), "--actors must be at least 1"),
    (ExecutorConfig(actors=2), "apply to the Ray executor only"),
    (ExecutorConfig(ray_address="auto"), "apply to the Ray executor only"),
])
def test_bad_executor_configs_say_what_to_change(config: ExecutorConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_executor(config)


def test_local_is_the_default_and_ray_is_not_imported_for_it() -> None:
    script = ("import sys\nfrom core.executor import make_executor\nimport core.job_configs, dialog.cli.main\n"
              "with make_executor() as executor:\n    assert executor.name == 'local'\n"
              "    assert list(executor.map(lambda: lambda b: [len(t) for t in b], [['ab']])) == [(0, [2])]\n"
              "assert 'ray' not in sys.modules, 'ray was imported'\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    with make_executor(ExecutorConfig(kind="ray", actors=2)) as executor:  # Ray starts only at the first map
        assert executor.name == "ray" and not executor._started


@pytest.mark.parametrize("command", [["bank", "score"], ["index", "build"],
                                     ["train", "reward", "--kind", "specificity"], ["train", "prompts"]])
def test_every_ray_capable_job_takes_the_same_flags(command: list[str]) -> None:
    parser = build_parser()
    args = parser.parse_args([*command, "--executor", "ray", "--actors", "2", "--ray-address", "auto"])
    assert executor_config(args) == ExecutorConfig(kind="ray", ray_address="auto", actors=2)
    assert executor_config(parser.parse_args(command)) == ExecutorConfig()
    with pytest.raises(ValueError, match="add --executor ray"):
        executor_config(parser.parse_args([*command, "--actors", "2"]))


class Shipped:
    """Ray's contract without Ray: the factory and every batch cross a pickle boundary, the worker is built from
    the unpickled factory (so the model is loaded again from its spec), and batches finish in reverse order."""

    name = "shipped"

    def __init__(self) -> None:
        self.loads = 0

    def map(self, factory, batches):  # type: ignore[no-untyped-def]
        worker = pickle.loads(pickle.dumps(factory))()
        self.loads += 1
        for index in reversed(range(len(batches))):
            yield index, pickle.loads(pickle.dumps(list(worker(pickle.loads(pickle.dumps(list(batches[index])))))))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from core.lm.wrapper import DecoderLM, LMOptions

    from tiny_models import build_tiny_decoder

    return DecoderLM.from_dir(build_tiny_decoder(tmp_path_factory.mktemp("lm") / "lm"), LMOptions(threads=1))


def test_teacher_and_uprise_scores_are_the_same_from_shipped_workers(tiny_lm, tmp_path: Path) -> None:
    from core.lm.wrapper import LMSpec
    from core.types import Context, Turn
    from retriever.prompt_scores import ScoreCache, ScoringConfig, score_prompts
    from rl.teacher import TeacherCache, score_with_cache

    ctx = Context((Turn("u", "hello there"), Turn("b", "hi, how are you?")))
    replies = ["fine, thanks", "ok", "I like green tea", "fine, thanks", "привет", "see you"]
    contexts = [ctx, None, ctx, ctx, None, ctx]
    local = score_with_cache(tiny_lm, contexts, replies, ["en"] * 6, chunk=2)
    shipped = Shipped()
    cache = TeacherCache.open(tmp_path / "teacher.jsonl")
    assert score_with_cache(tiny_lm, contexts, replies, ["en"] * 6, cache, chunk=2, executor=shipped) == local
    assert shipped.loads == 1 and len(TeacherCache.open(tmp_path / "teacher.jsonl").rows) == 5

    config = ScoringConfig(chunk=2, batch_size=2)
    prompts = ["user: hello\nbot:", "user: how are you?\nbot:", "user: tea?\nbot:"]
    local_means = score_prompts(tiny_lm, prompts, replies[:3], ["en"] * 3, None, config, progress=False)
    prompt_cache = ScoreCache(tmp_path / "prompts.json")
    assert score_prompts(tiny_lm, prompts, replies[:3], ["en"] * 3, prompt_cache, config, progress=False,
                         executor=Shipped()) == local_means
    assert len(ScoreCache(tmp_path / "prompts.json").rows) == 3

    other = LMSpec(tiny_lm.spec().path, tiny_lm.options, "someone-else:fp32")
    with pytest.raises(RuntimeError, match="the model differs on this worker"):
        other.load()


def test_index_chunks_depend_on_the_job_alone_and_let_a_pool_share_small_jobs() -> None:
    from dialog.jobs.index_build import chunk_size

    assert chunk_size(39, 2) == 4  # 10 chunks of whole encoder batches
    assert chunk_size(5000, 64) == 320 and -(-5000 // 320) == 16
    assert chunk_size(100_000, 64) == 1024  # big jobs: the encoder's own 16-batch progress chunk
    assert chunk_size(0, 64) == chunk_size(1, 64) == 64
