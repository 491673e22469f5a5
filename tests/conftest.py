"""Shared fixtures: one real Asterisk instance on free ports and one pjsua2 stack per session."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ivr.ari.client import AriEventStream
from ivr.ari.events import AriEvent
from ivr.asterisk.instance import AsteriskInstance, InstanceState, free_port
from ivr.asterisk.provision import locate_asterisk
from ivr.errors import ProvisioningError
from ivr.settings import AsteriskSettings

E = TypeVar("E", bound=AriEvent)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@dataclass(frozen=True)
class RunningAsterisk:
    """A test instance and the state ``up`` returned."""

    instance: AsteriskInstance
    state: InstanceState

    @property
    def pbx(self) -> str:
        """host:port of its SIP transport."""
        return self.state.pbx


def make_test_settings(**overrides: object) -> AsteriskSettings:
    """Asterisk settings on ports that are free now (tests run beside `make run`)."""
    rtp_start = random.randrange(30000, 39000, 200)
    values: dict[str, object] = {
        "instance": f"test-{os.getpid()}-{random.randrange(10**6)}",
        "ari_port": free_port("tcp"), "sip_port": free_port("udp"),
        "rtp_start": rtp_start, "rtp_end": rtp_start + 199, "agents_per_region": 2,
    }
    values.update(overrides)
    return AsteriskSettings(**values)  # type: ignore[arg-type]


def run_asterisk(settings: AsteriskSettings | None = None) -> Iterator[RunningAsterisk]:
    """A real Asterisk on ``settings`` (default: free ports), removed afterwards; skips the
    test when none is installed."""
    try:
        install = locate_asterisk()
    except ProvisioningError as exc:
        pytest.skip(f"no Asterisk available: {exc} (make test provisions one)")
    settings = settings or make_test_settings()
    instance = AsteriskInstance(install, settings.instance)
    state = instance.up(settings, ("north", "east", "south", "west"))
    try:
        yield RunningAsterisk(instance, state)
    finally:
        instance.remove()


@pytest.fixture(scope="session")
def asterisk() -> Iterator[RunningAsterisk]:
    """A real Asterisk for the whole session, removed afterwards."""
    yield from run_asterisk()


@pytest.fixture(scope="session")
def sip_stack() -> Iterator[object]:
    """The process-wide pjsua2 stack (pjsua2 allows one endpoint per process)."""
    from ivr.sip.phone import SipStack, pjsua2_available

    if not pjsua2_available():
        pytest.skip("pjsua2 is not installed (scripts/build_pjsua2 builds it)")
    stack = SipStack().start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def tiny_whisper() -> Path:
    """The tiny random-weight Whisper (CTranslate2), built once and cached."""
    from asr.testing.tiny_models import TinyModelUnavailable, build_tiny_whisper

    try:
        return build_tiny_whisper()
    except TinyModelUnavailable as exc:
        pytest.skip(f"tiny Whisper model cannot be built here: {exc}")


@pytest.fixture(scope="session")
def trained_whisper() -> Path:
    """The shipped default Whisper (base), assembled and verified by ``make setup``."""
    from asr import default_model

    return default_model.install()


@pytest.fixture(scope="session")
def spoken_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """The labelled spoken requests (tests/data/spoken_requests.yaml) and their folder."""
    from asr.testing.speech import SynthesisUnavailable, build_set, cache_root

    folder = cache_root() / "spoken-requests"
    try:
        return folder, build_set(Path(__file__).parent / "data" / "spoken_requests.yaml",
                                 folder)
    except SynthesisUnavailable as exc:
        pytest.skip(str(exc))


def drop_lazy_speechbrain_modules() -> None:
    """Hypothesis scans ``sys.modules`` for constants; SpeechBrain leaves lazy redirect modules
    there whose attribute access imports optional packages (k2) that are not installed. Once a
    test has loaded an ECAPA model, every later hypothesis test would fail on them."""
    for name, module in list(sys.modules.items()):
        if type(module).__name__ in ("LazyModule", "DeprecatedModuleRedirect"):
            del sys.modules[name]


@pytest.fixture(autouse=True)
def _no_lazy_speechbrain_modules() -> None:
    drop_lazy_speechbrain_modules()


@pytest.fixture
def agents(sip_stack: object, asterisk: RunningAsterisk, artifacts: Path,
           hotline: object) -> Iterator[object]:
    """Agent phones for one test (the module's ``hotline`` must be running); afterwards they
    are unregistered and nothing of the test's calls may be left in Asterisk."""
    from hotline import Agents

    team = Agents(sip_stack, asterisk, artifacts)  # type: ignore[arg-type]
    try:
        yield team
    finally:
        team.close()
        hotline.assert_nothing_left()  # type: ignore[attr-defined]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """Folder kept after the run for recordings and screenshots of this test."""
    path = ARTIFACTS / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


class EventTap:
    """Reads an ARI event stream in the background so tests can wait for specific events."""

    def __init__(self, stream: AriEventStream) -> None:
        self.stream = stream
        self.queue: asyncio.Queue[AriEvent] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for event in self.stream:
            await self.queue.put(event)

    async def next(self, kind: type[E], within_s: float = 10.0,
                   where: object = None) -> E:
        """The next event of ``kind`` (optionally matching ``where(event)``)."""
        async def find() -> E:
            while True:
                event = await self.queue.get()
                if isinstance(event, kind) and (where is None or where(event)):  # type: ignore[operator]
                    return event

        return await asyncio.wait_for(find(), within_s)

    async def aclose(self) -> None:
        """Stop reading and close the WebSocket."""
        self.task.cancel()
        await self.stream.aclose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One private PostgreSQL server for the session (Debian's binaries, a temporary cluster,
    run as an unprivileged user); each test gets its own database from it."""
    from ivr.store.postgres import LocalPostgres, PostgresUnavailable

    # Under /tmp with mode 0755: the server's user must be able to enter every parent folder.
    folder = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
    folder.chmod(0o755)
    server = LocalPostgres(folder / "pg")
    try:
        server.start()
    except PostgresUnavailable as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL here ({exc}); scripts/host_packages installs it")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


_DATABASES = itertools.count(1)
# Every engine the store supports: parametrize a fixture with these and call new_database().
ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def new_database(request: pytest.FixtureRequest, folder: Path) -> str:
    """A fresh, empty database on the engine of ``request.param``: SQLite in ``folder``, or a
    new database on the session's PostgreSQL server."""
    from ivr.store.db import sqlite_url

    if request.param == "sqlite":
        return sqlite_url(folder)
    server = request.getfixturevalue("postgres")
    url: str = server.create_database(f"ivr_test_{os.getpid()}_{next(_DATABASES)}")
    return url


def sql(url: str, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on ``url`` from a connection of its own (as another client would,
    e.g. a tamperer) and return the rows (none for writes, which are committed)."""
    from sqlalchemy import text

    from ivr.store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each engine the store supports (see ``new_database``)."""
    return new_database(request, tmp_path)


@pytest.fixture
def store(database_url: str) -> Iterator[Any]:
    """A migrated store on SQLite (in the test's folder) and on PostgreSQL."""
    from ivr.store.db import make_engine, migrate
    from ivr.store.repository import Store

    engine = make_engine(database_url)
    migrate(engine)
    yield Store(engine)
    engine.dispose()
