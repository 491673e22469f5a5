#!/usr/bin/env python3
"""Download the default models named in models/manifest.json into models/ and verify them.

Usage: scripts/fetch_models.py [--only NAME]... [--models-dir DIR] [--verify-only] [--timeout S]

Needs a reachable model hub (Hugging Face, or ``HF_ENDPOINT``). Where a file's sha256 is null in
the manifest, the first download records it in ``<models-dir>/checksums.lock.json`` (trust on
first use) and later runs verify against that record. Exit status: 0 ok, 1 verification failed,
2 hub unreachable or download failed; failures print one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.default_model import sha256_of  # noqa: E402

LOCK_NAME = "checksums.lock.json"


class FetchError(Exception):
    """A one-line, user-facing reason the fetch failed; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def verify(model: dict[str, Any], folder: Path, lock: dict[str, str]) -> list[str]:
    """Problems with ``folder`` (missing files, checksum mismatches); records unknown sums."""
    problems: list[str] = []
    for name, expected in model["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{model['name']}: {name} missing in {folder}")
            continue
        key = f"{model['name']}/{name}"
        want = expected or lock.get(key)
        actual = sha256_of(path)
        if want is None:
            lock[key] = actual
        elif actual != want:
            problems.append(f"{model['name']}: {name} sha256 {actual} != expected {want}")
    return problems


def _hub_unreachable(endpoint: str, exc: BaseException) -> FetchError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FetchError(f"fetch_models: model hub {endpoint} unreachable ({reason[:160]}); "
                      "copy models/ from a machine that has them (see models/README.md)")


def download(model: dict[str, Any], folder: Path, timeout: float) -> None:
    """Fetch the manifest's files of ``model`` into ``folder``."""
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:
        raise FetchError(f"fetch_models: huggingface_hub is not installed ({exc})") from exc
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise FetchError(f"fetch_models: model hub {endpoint} unreachable (HF_HUB_OFFLINE is "
                         "set); copy models/ from a machine that has them (see models/README.md)")
    try:
        HfApi(endpoint=endpoint).model_info(model["repo"], revision=model.get("revision"),
                                            timeout=timeout)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise FetchError(f"fetch_models: {model['repo']} not found on {endpoint}") from exc
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, OSError) as exc:
        raise _hub_unreachable(endpoint, exc) from exc
    except Exception as exc:  # httpx/requests connection errors differ between hub versions
        raise _hub_unreachable(endpoint, exc) from exc
    folder.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(model["repo"], revision=model.get("revision"), local_dir=folder,
                          allow_patterns=list(model["files"]), etag_timeout=timeout,
                          endpoint=endpoint)
    except Exception as exc:
        raise FetchError(f"fetch_models: download of {model['repo']} failed: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
                         ) from exc


def run(args: argparse.Namespace) -> int:
    """Fetch and verify; returns the exit status."""
    models_dir: Path = args.models_dir
    manifest = json.loads((args.manifest or models_dir / "manifest.json").read_text())
    # Hub models only; the default Whisper comes from registry packages (asr.default_model).
    hub_models = [m for m in manifest["models"] if "repo" in m]
    chosen = [m for m in hub_models if not args.only or m["name"] in args.only]
    unknown = set(args.only or ()) - {m["name"] for m in hub_models}
    if unknown:
        raise FetchError(f"fetch_models: unknown model(s) {', '.join(sorted(unknown))}", 1)
    lock_path = models_dir / LOCK_NAME
    lock: dict[str, str] = json.loads(lock_path.read_text()) if lock_path.is_file() else {}
    problems: list[str] = []
    try:
        for model in chosen:
            folder = models_dir / model["folder"]
            complete = all((folder / name).is_file() for name in model["files"])
            if not complete and not args.verify_only:
                download(model, folder, args.timeout)
            found = verify(model, folder, lock)
            problems += found
            if not found:
                print(f"{model['name']}: ok ({folder})")
    finally:
        if lock:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock_path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    if problems:
        raise FetchError("fetch_models: " + "; ".join(problems), 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="model name from the manifest")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="default: <models-dir>/manifest.json")
    parser.add_argument("--verify-only", action="store_true", help="never download")
    parser.add_argument("--timeout", type=float, default=float(
        os.environ.get("IVR_FETCH_TIMEOUT_S", "10")), help="hub timeout in seconds")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FetchError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
