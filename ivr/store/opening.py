"""Opening the service's database: the store, migrated, with its personal-data columns sealed
under the master key; the master key itself (configured, or made once per install); and the
retention job's single run.

Light on purpose: the command line (``ivr token``, ``ivr account``, ``ivr keys``, ``ivr purge``)
opens the store through this module without loading the speech or speaker models.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ivr.asterisk.provision import cache_dir
from ivr.settings import Settings
from ivr.store import crypto
from ivr.store.db import make_engine, migrate, sqlite_url, startup_lock
from ivr.store.repository import Store
from voiceprint.errors import MasterKeyError
from voiceprint.templates import MasterKey

if TYPE_CHECKING:
    from voiceprint.service import VoiceprintService

log = logging.getLogger(__name__)


def open_store(settings: Settings, seal: bool = True) -> Store:
    """The store at ``database_url`` (or SQLite in ``data_dir``), migrated to the newest schema,
    with its personal-data columns sealed under the master key (made on first use, see
    :func:`master_key`); values stored in clear before are sealed now. Without a master key
    (none configured, generation off) they are stored in clear, and a warning says so."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url or sqlite_url(settings.data_dir))
    migrate(engine)
    store = Store(engine)
    if not seal:
        return store
    key = master_key(settings)
    if key is None:
        log.warning("no master key: caller numbers and transcripts are stored in clear")
        return store
    with startup_lock(engine):  # one node at a time makes the first data key and seals
        crypto.install(engine, crypto.FieldKeys(engine, key, previous_master_keys(settings)))
        sealed = crypto.seal_existing(engine)
    if sealed:
        log.info("values stored in clear were sealed", extra={"values": sealed})
    return store


def purge_once(settings: Settings, store: Store,
               voiceprint: VoiceprintService | None = None) -> dict[str, int]:
    """One run of the retention job: what each kind of data lost (recorded per kind)."""
    privacy, now = settings.privacy, datetime.now(UTC)
    done: dict[str, int] = {}
    for kind, days in (("calls", privacy.retain_calls_days),
                       ("transcripts", privacy.retain_transcripts_days)):
        if days is not None:
            done[kind] = store.purge(kind, now - timedelta(days=days), now)
    if voiceprint is not None:  # recordings expire at the time sealed into them
        done["recordings"] = voiceprint.purge_expired()
        store.record_purge("recordings", now, done["recordings"], now)
    if any(done.values()):
        log.info("retention purge", extra={k: v for k, v in done.items()})
    return done


def previous_master_keys(settings: Settings) -> list[MasterKey]:
    """The previous master keys of a rotation in progress (checked like the master key)."""
    return [read_key_file(path) for path in settings.voiceprint.previous_master_key_files]


def master_key_path() -> Path:
    """Where a generated master key lives: the per-install secrets folder of the cache (next
    to the PBX credentials), outside any checkout."""
    return cache_dir() / "secrets" / "voiceprint-master.key"


def master_key(settings: Settings) -> MasterKey | None:
    """The voiceprint master key from settings or its file; else the per-install key, made on
    first use (32 random bytes, file mode 0600; the key itself is never logged) in the
    configured file or the secrets folder. None when none is configured and generation is
    off."""
    vp = settings.voiceprint
    if vp.master_key is not None:
        return MasterKey.from_config(vp.master_key.get_secret_value())
    path = vp.master_key_file
    if path is None and not vp.generate_master_key:
        return None
    if vp.generate_master_key and (path is None or not path.exists()):
        # A configured file that does not exist yet is where the per-install key goes (a
        # container keeps it on its data volume).
        path = path or master_key_path()
        if _make_key_file(path):
            log.warning("voiceprint master key generated; back it up (without it every "
                        "caller must enroll again)", extra={"path": str(path)})
    assert path is not None
    return read_key_file(path)


def read_key_file(path: Path) -> MasterKey:
    """A master key from its file; refused when other users may read the file."""
    try:
        with path.open("r", encoding="ascii") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read()
    except OSError as exc:
        raise MasterKeyError(f"voiceprint master key file unreadable: {exc.strerror}"
                             ) from None
    if mode & 0o077:
        # Like ssh with a private key: a key others can read protects nothing; refuse it.
        raise MasterKeyError(f"voiceprint master key file {path} is open to other users "
                             f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it")
    return MasterKey.from_config(text)


def _make_key_file(path: Path) -> bool:
    """Create ``path`` with a fresh key unless it exists (another process may race: O_EXCL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return True
