"""Locate a usable Asterisk: a system one (>= 20) or a cached Debian sid root with Asterisk 22."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ivr.errors import ProvisioningError, ToolMissingError

log = logging.getLogger(__name__)

MIN_SYSTEM_MAJOR = 20
# Bump when the recipe below changes so old caches are rebuilt rather than trusted.
SID_ROOT_RECIPE = "v2"
SID_PACKAGES = (
    "asterisk", "asterisk-modules", "asterisk-core-sounds-en-gsm", "asterisk-moh-opsound-gsm",
)
# The sid Release file in the mirror can be older than its Valid-Until date.
APT_OPTS = ("-o", "Acquire::Check-Valid-Until=false", "-o", "Acquire::Check-Date=false")


def cache_dir() -> Path:
    """Folder for caches kept across clones (``IVR_CACHE_DIR`` or ``~/.cache/ivr``)."""
    return Path(os.environ.get("IVR_CACHE_DIR", Path.home() / ".cache" / "ivr"))


@dataclass(frozen=True)
class AsteriskInstall:
    """An Asterisk binary and how to run it: directly, or inside a chroot."""

    binary: str
    version: str
    root: Path | None = None

    @property
    def major(self) -> int:
        """Major version number (22 for ``22.10.1``)."""
        return int(self.version.split(".")[0])

    def command(self, *args: str) -> list[str]:
        """Argument vector that runs asterisk with ``args`` (inside the root if any)."""
        if self.root is not None:
            return ["chroot", str(self.root), self.binary, *args]
        return [self.binary, *args]

    def runtime_base(self) -> PurePosixPath:
        """Folder, as Asterisk sees it, under which instances keep config, logs and state."""
        if self.root is not None:
            return PurePosixPath("/srv/ivr/instances")
        return PurePosixPath(str(cache_dir() / "instances"))

    def host_path(self, inner: PurePosixPath) -> Path:
        """Path on the host of a path as Asterisk sees it."""
        if self.root is None:
            return Path(inner)
        return self.root / str(inner).lstrip("/")


def parse_version(text: str) -> str | None:
    """Extract ``22.10.1`` from ``asterisk -V`` output; None when it is not there."""
    match = re.search(r"Asterisk\s+(\d+(?:\.\d+)*)", text)
    return match.group(1) if match else None


def find_system_asterisk() -> AsteriskInstall | None:
    """A host Asterisk of version >= 20, or None."""
    binary = shutil.which("asterisk")
    if binary is None:
        return None
    try:
        out = subprocess.run(
            [binary, "-V"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = parse_version(out)
    if version is None or int(version.split(".")[0]) < MIN_SYSTEM_MAJOR:
        log.info("system asterisk ignored", extra={"binary": binary, "version": version})
        return None
    return AsteriskInstall(binary=binary, version=version)


def host_debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian archive URI this host's apt uses (never hard-coded in the repo)."""
    candidates: list[str] = []
    for sources in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for stanza in sources.read_text(encoding="utf-8").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split():
                candidates.extend(fields.get("uris", "").split())
    list_files = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    for list_file in list_files:
        if not list_file.exists():
            continue
        for line in list_file.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri = next((p for p in parts[1:] if not p.startswith("[")), None)
                if uri and not uri.endswith("]"):
                    candidates.append(uri)
    for uri in candidates:
        # The main archive, not the security or ports archives.
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    if candidates:
        return candidates[0].rstrip("/")
    raise ProvisioningError(f"no Debian archive found in {etc_apt} to build the Asterisk root from")


def sid_root_dir() -> Path:
    """Cached sid root for this recipe version."""
    return cache_dir() / f"asterisk-sid-{SID_ROOT_RECIPE}" / "root"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(step: str, argv: list[str], log_file: Path, timeout: float = 900) -> None:
    with log_file.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired as exc:
            raise ProvisioningError(
                f"{step}: timed out after {timeout:.0f}s (log {log_file})") from exc
    if proc.returncode != 0:
        raise ProvisioningError(f"{step}: exit status {proc.returncode} (log {log_file})")


def ensure_sid_root(mirror: str | None = None) -> AsteriskInstall:
    """Build (once) and return the cached Debian sid root with Asterisk 22 in it."""
    root = sid_root_dir()
    stamp = root / ".ivr-ready"
    with _locked(root.parent / ".lock"):
        if stamp.exists():
            return AsteriskInstall("/usr/sbin/asterisk", stamp.read_text().strip(), root)
        for tool in ("debootstrap", "chroot"):
            if shutil.which(tool) is None:
                raise ToolMissingError(f"'{tool}' is required to build the Asterisk root; "
                                       "install it with: apt-get install debootstrap")
        mirror = mirror or host_debian_mirror()
        partial = root.with_name("root.partial")
        log_file = root.parent / "provision.log"
        if partial.exists():
            shutil.rmtree(partial)
        log.info("building asterisk sid root", extra={"root": str(root), "log": str(log_file)})
        _run("debootstrap", ["debootstrap", "--variant=minbase", "sid", str(partial), mirror],
             log_file)
        (partial / "etc/apt/sources.list").write_text(
            f"deb {mirror} sid main\ndeb-src {mirror} sid main\n", encoding="utf-8")
        _run("apt-get update", ["chroot", str(partial), "apt-get", *APT_OPTS, "update"], log_file)
        _run("apt-get install", ["chroot", str(partial), "apt-get", *APT_OPTS, "install", "-y",
                                 "--no-install-recommends", *SID_PACKAGES], log_file)
        out = subprocess.run(["chroot", str(partial), "/usr/sbin/asterisk", "-V"],
                             capture_output=True, text=True, check=False).stdout
        version = parse_version(out)
        if version is None:
            raise ProvisioningError(f"asterisk in the sid root does not run: {out!r}")
        (partial / ".ivr-ready").write_text(version + "\n", encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        partial.rename(root)
        return AsteriskInstall("/usr/sbin/asterisk", version, root)


def locate_asterisk(prefer_system: bool = True) -> AsteriskInstall:
    """A system Asterisk >= 20 when present (and preferred), else the cached sid root."""
    forced = os.environ.get("IVR_ASTERISK_SOURCE", "auto")
    if prefer_system and forced in ("auto", "system"):
        system = find_system_asterisk()
        if system is not None:
            return system
        if forced == "system":
            raise ProvisioningError("IVR_ASTERISK_SOURCE=system but no asterisk >= 20 on PATH")
    return ensure_sid_root()


def fetch_pjproject_source(dest: Path) -> Path:
    """Fetch Debian's asterisk source (it bundles pjproject); return the pjproject tarball."""
    install = ensure_sid_root()
    assert install.root is not None
    existing = sorted(dest.glob("*orig-Xpjproject.tar.*"))
    if existing:
        return existing[-1]
    inner = PurePosixPath("/srv/src")
    host = install.host_path(inner)
    host.mkdir(parents=True, exist_ok=True)
    log_file = install.root.parent / "provision.log"
    _run("apt-get update", ["chroot", str(install.root), "apt-get", *APT_OPTS, "update"], log_file)
    _run("apt-get source", ["chroot", str(install.root), "sh", "-c",
                            f"cd {inner} && apt-get {' '.join(APT_OPTS)} source "
                            "--download-only asterisk"], log_file)
    found = sorted(host.glob("*orig-Xpjproject.tar.*"))
    if not found:
        raise ProvisioningError(
            f"no pjproject component in Debian's asterisk source (log {log_file})")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / found[-1].name
    shutil.copy2(found[-1], target)
    return target


def main() -> int:
    """``python -m ivr.asterisk.provision``: make sure an Asterisk is available; print it."""
    import json
    import sys
    import time

    started = time.monotonic()
    try:
        install = locate_asterisk()
    except ProvisioningError as exc:
        print(f"asterisk provisioning failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"source": "sid-root" if install.root else "system",
                      "version": install.version, "root": str(install.root or ""),
                      "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
