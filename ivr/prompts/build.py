"""Speak the prompt catalogue to WAV files Asterisk can play (8 kHz mono 16-bit PCM).

``python -m ivr.prompts.build [--out DIR] [--force]`` (or ``scripts/make_prompts``) writes
``DIR/{zh,en}/{key}.wav`` with espeak-ng and sox. A ``manifest.json`` next to them records a
fingerprint per prompt, so a rebuild only speaks what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ivr.errors import PromptError

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
DEFAULT_OUT_DIR = Path("var/prompts")
MANIFEST_NAME = "manifest.json"
LANGUAGES = ("zh", "en")
SAMPLE_RATE = 8000
# What Asterisk's format_wav plays; part of each fingerprint, so changing it rebuilds everything.
OUTPUT_FORMAT = f"wav pcm s16le mono {SAMPLE_RATE} Hz, peak -3 dBFS"
_KEY = re.compile(r"[a-z0-9_]+")
_TOOL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice and its speed in words per minute."""

    name: str
    speed: int


# "cmn" in espeak-ng 1.51 (Debian bookworm) reads its own pinyin with English letter rules
# ("请" -> "qing three"); the pinyin voice speaks the same dictionary correctly. Its Mandarin is
# slow at equal settings (about 2.5 syllables/s at 150), hence the higher speed.
VOICES: Mapping[str, Voice] = {
    "zh": Voice("cmn-latn-pinyin", 190),
    "en": Voice("en-us", 160),
}


@dataclass(frozen=True)
class PromptSet:
    """Built prompts: ``root/{language}/{key}.wav`` for every language and key."""

    root: Path
    keys: tuple[str, ...]
    # "language/key" of the prompts this build spoke and of those it found up to date.
    built: tuple[str, ...] = field(default=(), compare=False)
    skipped: tuple[str, ...] = field(default=(), compare=False)

    def path(self, language: str, key: str) -> Path:
        """The WAV file of one prompt."""
        if language not in LANGUAGES or key not in self.keys:
            raise KeyError(f"no prompt {language}/{key}")
        return self.root / language / f"{key}.wav"


@dataclass(frozen=True)
class _Job:
    language: str
    key: str
    text: str
    voice: Voice
    fingerprint: str

    @property
    def name(self) -> str:
        return f"{self.language}/{self.key}"


def load_catalog() -> dict[str, dict[str, str]]:
    """The prompt texts: key -> {"zh": ..., "en": ...}, whitespace collapsed."""
    try:
        data: Any = yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PromptError(f"cannot read the prompt catalogue {CATALOG_FILE}: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise PromptError(f"{CATALOG_FILE}: expected a mapping of prompt keys")
    catalog: dict[str, dict[str, str]] = {}
    for key, texts in data.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise PromptError(f"{CATALOG_FILE}: prompt key {key!r} is not [a-z0-9_]+")
        if not isinstance(texts, dict) or set(texts) != set(LANGUAGES):
            raise PromptError(f"{CATALOG_FILE}: prompt {key} needs exactly {', '.join(LANGUAGES)}")
        entry: dict[str, str] = {}
        for language in LANGUAGES:
            text = texts[language]
            if not isinstance(text, str) or not text.strip():
                raise PromptError(f"{CATALOG_FILE}: prompt {key}.{language} is empty")
            entry[language] = " ".join(text.split())
        catalog[key] = entry
    return catalog


def build_prompts(out_dir: Path, *, force: bool = False) -> PromptSet:
    """Speak every catalogue prompt into ``out_dir``; prompts already up to date are skipped."""
    catalog = load_catalog()
    espeak, sox = _require_tool("espeak-ng"), _require_tool("sox")
    version = _espeak_version(espeak)
    manifest_path = out_dir / MANIFEST_NAME
    previous = {} if force else _read_manifest(manifest_path)
    jobs = [
        _Job(language, key, texts[language], VOICES[language],
             _fingerprint(texts[language], VOICES[language], version))
        for key, texts in catalog.items() for language in LANGUAGES
    ]
    todo = [job for job in jobs
            if previous.get(job.name) != job.fingerprint or not _wav_path(out_dir, job).is_file()]
    up_to_date = [job for job in jobs if job not in todo]
    done: list[_Job] = []
    for language in LANGUAGES:
        (out_dir / language).mkdir(parents=True, exist_ok=True)
    try:
        if todo:
            # Scratch files live under out_dir so the final rename stays on one filesystem.
            with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as scratch:
                workers = min(8, os.cpu_count() or 1, len(todo))
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = [pool.submit(_speak, job, out_dir, Path(scratch), espeak, sox)
                               for job in todo]
                errors = [future.exception() for future in futures]
                done.extend(job for job, error in zip(todo, errors, strict=True) if error is None)
                failed = next((error for error in errors if error is not None), None)
                if failed is not None:
                    raise failed
    finally:
        # Record what is on disk even when a prompt failed, so the next run redoes only that.
        _write_manifest(manifest_path, {job.name: job.fingerprint for job in up_to_date + done})
    return PromptSet(out_dir, tuple(catalog), tuple(job.name for job in done),
                     tuple(job.name for job in up_to_date))


def _wav_path(out_dir: Path, job: _Job) -> Path:
    return out_dir / job.language / f"{job.key}.wav"


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PromptError(
            f"{name} is not installed or not on PATH; it is needed to generate the spoken "
            "prompts (Debian/Ubuntu: apt-get install espeak-ng sox)")
    return path


def _run(command: list[str], what: str) -> str:
    """Run a tool, returning its stdout; any failure becomes a PromptError naming ``what``."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=_TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PromptError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-500:]
        raise PromptError(f"{what}: exit status {done.returncode}: {detail}")
    return done.stdout


def _espeak_version(espeak: str) -> str:
    """"eSpeak NG text-to-speech: 1.51" (the data path after it is left out: not a version)."""
    first_line = (_run([espeak, "--version"], "espeak-ng --version").strip().splitlines()
                  or [""])[0]
    return first_line.split("Data at:")[0].strip()


def _fingerprint(text: str, voice: Voice, version: str) -> str:
    spec = {"text": text, "voice": voice.name, "speed": voice.speed, "espeak_ng": version,
            "format": OUTPUT_FORMAT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _speak(job: _Job, out_dir: Path, scratch: Path, espeak: str, sox: str) -> None:
    """Speak one prompt and move the converted WAV into place in one rename."""
    spoken = scratch / f"{job.language}-{job.key}.espeak.wav"
    converted = scratch / f"{job.language}-{job.key}.wav"
    _run([espeak, "-v", job.voice.name, "-s", str(job.voice.speed), "-w", str(spoken),
          "--", job.text], f"espeak-ng could not speak {job.name}")
    _run([sox, str(spoken), "-t", "wav", "-e", "signed-integer", "-b", "16", "-c", "1",
          str(converted), "rate", str(SAMPLE_RATE), "gain", "-n", "-3"],
         f"sox could not convert {job.name}")
    os.replace(converted, _wav_path(out_dir, job))


def _read_manifest(path: Path) -> dict[str, str]:
    """Fingerprints of the last build; an unreadable manifest just means rebuild everything."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, dict):
        return {}
    return {str(name): value for name, value in prompts.items() if isinstance(value, str)}


def _write_manifest(path: Path, prompts: Mapping[str, str]) -> None:
    body = json.dumps({"format": 1, "prompts": dict(sorted(prompts.items()))}, indent=2)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(body + "\n", encoding="utf-8")
    os.replace(partial, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the prompts and print one JSON line with what was done."""
    parser = argparse.ArgumentParser(
        prog="make_prompts", description="Speak the prompt catalogue to WAV files for Asterisk.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"output folder (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("--force", action="store_true", help="speak every prompt again")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        prompts = build_prompts(args.out, force=args.force)
    except PromptError as exc:
        print(f"make_prompts: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(args.out), "built": len(prompts.built),
                      "skipped": len(prompts.skipped),
                      "seconds": round(time.monotonic() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
