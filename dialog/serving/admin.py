"""Hot publish: the ``repliq.v1.Admin`` service swaps a freshly built, verified bank index into the running server.

An editor's approvals reach the bank at once but the server only sees them through its index. ``Publish``
brings the index up to date incrementally (``retriever.bank_index.update_index``: only changed phrases are
encoded, a new snapshot is written beside the live one and ``CURRENT`` moves atomically), loads and
verifies that snapshot (checksums, encoder, dimension, bank contents, one probe search per shard) and only
then replaces the retriever's index with one reference assignment. A request in flight keeps the index
object it started with, so none fails during the swap; a snapshot that fails any check is refused and the
previous index keeps serving. Callers authenticate with the bearer token in ``<home>/admin.token`` (0600,
created on the server's first start), compared in constant time; mutual TLS (``dialog.serving.tls``) can
guard the port as well.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from core import __version__
from dialog.serving.logs import log_event
from repliq.v1 import admin_pb2, admin_pb2_grpc, chat_pb2
from retriever.bank_index import (
    BankIndex,
    BankIndexError,
    IndexMismatchError,
    StaleIndexError,
    describe_index,
    index_root,
    load_index,
    update_index,
)
from retriever.bank_retriever import BankRetriever

if TYPE_CHECKING:
    from core.bank.store import PhraseBank
    from core.config import Settings
    from dialog.serving.assembly import Assembled
    from dialog.serving.pipeline import Pipeline
    from retriever.encoder import Encoder

TOKEN_FILE = "admin.token"
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
# Times the bank may move on between building a snapshot and loading it before publishing gives up.
ATTEMPTS = 3
# Phrases one publish may encode in the serving process; more (a full rebuild) belongs to `repliq index build`.
MAX_PUBLISH_ENCODE = 5000
# Passages per encoder call while publishing: the encoder's lock is released in between, so requests' query
# encodings interleave instead of waiting for the whole batch.
ENCODE_SLICE = 16
MIN_TOKEN_CHARS = 16
log = logging.getLogger("repliq.server")


class TokenError(ValueError):
    """The admin token file cannot be trusted (readable by others, too short); the message says the fix."""


class PublishRefused(Exception):
    """The new index cannot be served; the previous one keeps serving. The message says what to do."""


def ensure_token(home: Path) -> str:
    """The workspace's admin token, created (random, owner-only) when there is none yet."""
    path = Path(home) / TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{TOKEN_FILE}.")  # mkstemp files are 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with suppress(FileExistsError):  # complete or absent, and never over another process's token
                os.link(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return read_token(path)


def read_token(path: Path) -> str:
    """A token file's content, refused when others may read it or when it is too short to be a secret."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"no admin token at {path}; `repliq serve` creates it on start (run the server "
                                "on this workspace first)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"{path} holds {len(token)} characters, too short for a secret; delete it and restart "
                         "`repliq serve` to create a new one")
    return token


class _ServingSideEncoder:
    """The serving encoder for an incremental build: small slices, and a refusal instead of a full re-encode."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.manifest, self.identity, self.dim = encoder.manifest, encoder.identity, encoder.dim
        self.encode_queries = encoder.encode_queries

    def encode_passages(self, texts: list[str], progress: object = None) -> np.ndarray:
        if len(texts) > MAX_PUBLISH_ENCODE:
            raise PublishRefused(f"this publish would encode {len(texts)} phrases inside the serving process (a full "
                                 "rebuild: no usable snapshot, or another encoder); run `repliq index build` first, "
                                 "then publish. The previous index keeps serving")
        parts = [self.encoder.encode_passages(texts[i:i + ENCODE_SLICE]) for i in range(0, len(texts), ENCODE_SLICE)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)


@dataclass
class PublishOutcome:
    before: dict[str, str]
    after: dict[str, str]
    changed: bool
    phrases: int
    snapshot: str
    counts: dict[str, int] = field(default_factory=lambda: {"added": 0, "edited": 0, "removed": 0})
    build_seconds: float = 0.0
    swap_seconds: float = 0.0


def _verify(index: BankIndex) -> None:
    """One probe search per shard: a phrase's own vector must come back as its best hit."""
    for language in index.languages:
        shard = index.shard(language)
        ids = shard.ids[:1] if shard is not None else np.empty(0, dtype=np.int64)
        if not len(ids):
            continue
        hits = index.search(shard.vectors(ids), language, 1)[0]
        if not hits or hits[0][1] < 0.99 or index.phrase(hits[0][0]) is None:
            raise PublishRefused(f"the new index's {language} shard fails its probe search (phrase #{int(ids[0])} "
                                 f"does not find itself: {hits}); run `repliq index build --full`, then publish")


class IndexPublisher:
    """Builds, verifies and swaps the live index of one serving pipeline; one publish at a time."""

    def __init__(self, settings: Settings, encoder: Encoder, bank: PhraseBank, retriever: BankRetriever,
                 pipeline: Pipeline) -> None:
        self.settings = settings
        self.encoder = encoder
        self.bank = bank
        self.retriever = retriever
        self.pipeline = pipeline
        self._lock = threading.Lock()

    def _catch_up(self, counts: dict[str, int]) -> None:
        """An incremental build when the live snapshot's manifest says it is behind the bank (cheap to read)."""
        try:
            described = describe_index(index_root(self.settings, self.encoder))
        except (OSError, ValueError):
            return  # unreadable: load_index names the problem and publish refuses
        if described is not None and described.get("bank_revision") == self.bank.revision:
            return
        try:
            report = update_index(self.bank, _ServingSideEncoder(self.encoder), self.settings)  # type: ignore[arg-type]
        except (BankIndexError, ValueError) as exc:
            raise PublishRefused(f"building the new index snapshot failed ({exc}); the previous index keeps "
                                 "serving") from exc
        for key in counts:
            counts[key] += getattr(report, key)

    def _load_current(self, counts: dict[str, int]) -> BankIndex:
        for _ in range(ATTEMPTS):
            self._catch_up(counts)
            try:
                return load_index(self.settings, self.encoder, self.bank)
            except StaleIndexError:  # the bank moved on while building: catch up again
                continue
            except (IndexMismatchError, BankIndexError, ValueError) as exc:
                raise PublishRefused(f"the new index snapshot was refused and the previous one keeps serving: "
                                     f"{exc}") from exc
        raise PublishRefused("the bank kept changing while the index was being built; publish again when "
                             "editing pauses")

    def _seed(self, old: BankIndex, new: BankIndex) -> None:
        """New and edited phrases' vectors into the request encoder's cache, so the blender need not encode them."""
        cache = getattr(self.retriever.encoder, "cache", None)
        if cache is None or not hasattr(cache, "seed_passages"):
            return
        for language in new.languages:
            shard = new.shard(language)
            fresh: dict[int, str] = {}
            for pid in shard.ids.tolist() if shard is not None else []:
                info, before = new.phrase(pid), old.phrase(pid)
                if info is not None and (before is None or before.text != info.text):
                    fresh[pid] = info.text
            if fresh:
                cache.seed_passages(list(fresh.values()), shard.vectors(list(fresh)))

    def publish(self) -> PublishOutcome:
        """Make the bank's approved phrases live; :class:`PublishRefused` leaves the old index serving."""
        with self._lock:
            started = time.monotonic()
            before = dict(self.pipeline.versions)
            counts = {"added": 0, "edited": 0, "removed": 0}
            candidate = self._load_current(counts)
            built = time.monotonic()
            _verify(candidate)
            old = self.retriever.bank_index
            manifest = candidate.manifest
            changed = (manifest.checksum, manifest.bank_revision) != (old.manifest.checksum, old.manifest.bank_revision)
            if changed:
                self._seed(old, candidate)
                self.retriever.bank_index = candidate  # one reference swap: requests in flight keep the old object
                self.pipeline.versions = {**before, "bank": str(manifest.bank_revision),
                                          "index": manifest.checksum[:12]}
            return PublishOutcome(before, dict(self.pipeline.versions), changed, len(candidate), manifest.snapshot,
                                  counts, built - started, time.monotonic() - built)


def _versions(values: dict[str, str], server: str) -> chat_pb2.Versions:
    known = ("encoder", "bank", "index", "ranker", "generator", "adapter")
    return chat_pb2.Versions(server=server, **{key: value for key, value in values.items() if key in known})


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, publisher: IndexPublisher, token: str) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the admin token must have at least {MIN_TOKEN_CHARS} characters")
        self.publisher = publisher
        self._token = token.encode("utf-8")

    def _authenticate(self, context: grpc.ServicerContext, rpc: str) -> None:
        header = dict(context.invocation_metadata()).get("authorization", "")
        scheme, _, given = str(header).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), self._token):
            log_event(log, "admin refused", logging.WARNING, rpc=rpc, peer=context.peer(), code="UNAUTHENTICATED")
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "Admin calls need the metadata 'authorization: Bearer <token>' with the token from the "
                          f"server workspace's {TOKEN_FILE}")

    def Publish(self, request: admin_pb2.PublishRequest, context: grpc.ServicerContext
                ) -> admin_pb2.PublishResponse:
        self._authenticate(context, "Publish")
        who = request.requested_by[:64]
        try:
            outcome = self.publisher.publish()
        except PublishRefused as exc:
            log_event(log, "publish refused", logging.ERROR, requested_by=who, error=str(exc))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log_event(log, "published", requested_by=who, changed=outcome.changed, bank=outcome.after.get("bank"),
                  index=outcome.after.get("index"), phrases=outcome.phrases, **outcome.counts,
                  build_s=round(outcome.build_seconds, 3), swap_s=round(outcome.swap_seconds, 3))
        return admin_pb2.PublishResponse(
            before=_versions(outcome.before, __version__), after=_versions(outcome.after, __version__),
            changed=outcome.changed, phrases=outcome.phrases, snapshot=outcome.snapshot,
            build_seconds=outcome.build_seconds, swap_seconds=outcome.swap_seconds, **outcome.counts)


def add_admin_service(servicer: AdminService, server: grpc.Server) -> None:
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)


def admin_service(settings: Settings, assembled: Assembled) -> AdminService:
    """The Admin servicer over an assembled pipeline, with the workspace's token (created when missing)."""
    retriever = next((s for s in assembled.pipeline.sources if isinstance(s, BankRetriever)), None)
    if retriever is None:
        raise ValueError("the serving pipeline has no bank retriever to publish to")
    publisher = IndexPublisher(settings, assembled.encoder, assembled.bank, retriever, assembled.pipeline)
    return AdminService(publisher, ensure_token(settings.home))
