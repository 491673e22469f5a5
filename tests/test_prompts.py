"""Spoken prompts: the catalogue, the real espeak-ng + sox build, and its incremental rebuilds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

from ivr.errors import PromptError
from ivr.prompts import build
from ivr.prompts.build import LANGUAGES, VOICES, PromptSet, build_prompts, load_catalog, main
from ivr.sip.audio import read_wav, rms_dbfs

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
CALL_FLOW_KEYS = {
    "greeting", "menu", "invalid", "no_input", "transfer", "agent_connected", "overflow",
    "callback_offer", "callback_confirm", "callback_invalid", "after_hours", "goodbye",
    "queue_position_many", *(f"queue_position_{n}" for n in range(1, 10)),
}
ALL_PROMPTS = [(language, key) for key in sorted(load_catalog()) for language in LANGUAGES]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> PromptSet:
    return build_prompts(tmp_path_factory.mktemp("prompts"))


def copy_of(prompts: PromptSet, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prompts.root, tmp_path / "prompts"))


def test_catalogue_has_every_prompt_of_the_call_flow_in_both_languages() -> None:
    catalog = load_catalog()
    assert CALL_FLOW_KEYS <= set(catalog)
    for key, texts in catalog.items():
        assert set(texts) == {"zh", "en"}, key
        assert re.search(r"[\u4e00-\u9fff]", texts["zh"]), f"{key}: zh text is not Chinese"
        assert not re.search(r"[A-Za-z]", texts["zh"]), f"{key}: the pinyin voice misreads Latin"
        assert texts["en"].isascii(), key


def test_mandarin_is_spoken_as_mandarin() -> None:
    # espeak-ng marks a switch to English phonemes with "(en)": that is how "cmn" 1.51 fails.
    texts = [texts["zh"] for texts in load_catalog().values()]
    phonemes = subprocess.run(
        ["espeak-ng", "-q", "-x", "-v", VOICES["zh"].name, "\n".join(texts)],
        capture_output=True, text=True, check=True).stdout
    assert phonemes.strip()
    assert "(en)" not in phonemes


def test_build_writes_zh_and_en_for_every_key(built: PromptSet) -> None:
    assert built.keys == tuple(load_catalog())
    assert sorted(built.built) == sorted(f"{lang}/{key}" for lang, key in ALL_PROMPTS)
    assert built.skipped == ()
    on_disk = {str(p.relative_to(built.root)) for p in built.root.rglob("*") if p.is_file()}
    assert on_disk == {f"{lang}/{key}.wav" for lang, key in ALL_PROMPTS} | {"manifest.json"}
    manifest = json.loads((built.root / "manifest.json").read_text())["prompts"]
    assert set(manifest) == set(built.built)
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in manifest.values())


@pytest.mark.parametrize(("language", "key"), ALL_PROMPTS)
def test_each_prompt_is_speech_asterisk_can_play(built: PromptSet, language: str,
                                                 key: str) -> None:
    path = built.path(language, key)
    assert path == built.root / language / f"{key}.wav"
    header = path.read_bytes()[:44]
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert int.from_bytes(header[20:22], "little") == 1  # plain PCM, what format_wav reads
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
    pcm = read_wav(path)
    shortest = 0.25 if key.startswith("digit_") else 0.5  # a single spoken digit is short
    assert shortest < pcm.seconds < 20.0
    assert rms_dbfs(pcm) > -35.0  # speech normalised to a -3 dBFS peak sits near -20 dBFS
    assert max(abs(pcm.samples.max()), abs(pcm.samples.min())) < 0.75  # -3 dBFS, no clipping


def test_path_refuses_unknown_prompts(built: PromptSet) -> None:
    with pytest.raises(KeyError):
        built.path("fr", "greeting")
    with pytest.raises(KeyError):
        built.path("zh", "no_such_prompt")


def test_second_build_skips_everything(built: PromptSet, tmp_path: Path) -> None:
    root = copy_of(built, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")}
    again = build_prompts(root)
    assert again.built == ()
    assert len(again.skipped) == len(ALL_PROMPTS)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")} == before


def test_changed_text_rebuilds_only_that_prompt(built: PromptSet, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_of(built, tmp_path)
    catalog = load_catalog()
    catalog["goodbye"]["en"] = "Thank you for calling the hotline. We wish you a pleasant day."
    monkeypatch.setattr(build, "load_catalog", lambda: catalog)
    old_audio = (root / "en" / "goodbye.wav").read_bytes()
    again = build_prompts(root)
    assert again.built == ("en/goodbye",)
    assert len(again.skipped) == len(ALL_PROMPTS) - 1
    assert (root / "en" / "goodbye.wav").read_bytes() != old_audio
    assert (root / "zh" / "goodbye.wav").read_bytes() == built.path("zh", "goodbye").read_bytes()
    assert read_wav(root / "en" / "goodbye.wav").seconds > read_wav(
        built.path("en", "goodbye")).seconds
    assert build_prompts(root).built == ()  # the manifest now holds the new text


def test_deleted_file_is_rebuilt_and_force_rebuilds_all(built: PromptSet, tmp_path: Path) -> None:
    root = copy_of(built, tmp_path)
    (root / "zh" / "menu.wav").unlink()
    assert build_prompts(root).built == ("zh/menu",)
    forced = build_prompts(root, force=True)
    assert len(forced.built) == len(ALL_PROMPTS) and forced.skipped == ()
    assert not list(root.glob(".build-*"))  # scratch folder removed


def test_missing_espeak_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PromptError, match=r"espeak-ng is not installed or not on PATH"):
        build_prompts(tmp_path / "out")


def test_missing_sox_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only_espeak = tmp_path / "bin"
    only_espeak.mkdir()
    espeak = shutil.which("espeak-ng")
    assert espeak is not None
    (only_espeak / "espeak-ng").symlink_to(espeak)
    monkeypatch.setenv("PATH", str(only_espeak))
    with pytest.raises(PromptError, match=r"sox is not installed"):
        build_prompts(tmp_path / "out")


def test_failed_prompt_is_reported_and_redone_next_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A synthesiser crash cannot be caused for real; a wrapper fails on one text only.
    espeak = shutil.which("espeak-ng")
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "espeak-ng"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in *再见*) '
                       'echo "voice crashed" >&2; exit 3;; esac; done\n'
                       f'exec {espeak} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    with pytest.raises(PromptError, match=r"espeak-ng could not speak zh/goodbye: exit status 3"):
        build_prompts(out)
    manifest = json.loads((out / "manifest.json").read_text())["prompts"]
    assert len(manifest) == len(ALL_PROMPTS) - 1 and "zh/goodbye" not in manifest
    assert not (out / "zh" / "goodbye.wav").exists()
    monkeypatch.undo()
    assert build_prompts(out).built == ("zh/goodbye",)


@pytest.mark.parametrize(("text", "message"), [
    ("greeting: {zh: 您好}\n", "needs exactly zh, en"),
    ("Greeting: {zh: 您好, en: Hello}\n", "not \\[a-z0-9_\\]"),
    ("greeting: {zh: '', en: Hello}\n", "greeting.zh is empty"),
    ("[]\n", "mapping"),
    ("greeting: {zh: [\n", "cannot read"),
])
def test_bad_catalogue_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                  message: str) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(text, encoding="utf-8")
    monkeypatch.setattr(build, "CATALOG_FILE", catalog)
    with pytest.raises(PromptError, match=message):
        load_catalog()


def test_main_prints_one_json_line(built: PromptSet, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_of(built, tmp_path)
    assert main(["--out", str(root)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(root)
    assert (report["built"], report["skipped"]) == (0, len(ALL_PROMPTS))
    assert 0 <= report["seconds"] < 5


def test_main_reports_a_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["--out", str(tmp_path / "out")]) == 1
    assert "espeak-ng is not installed" in capsys.readouterr().err


def test_script_runs_the_build_with_the_venv(built: PromptSet, tmp_path: Path) -> None:
    root = copy_of(built, tmp_path)
    done = subprocess.run([str(REPO / "scripts" / "make_prompts"), "--out", str(root)],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    assert json.loads(done.stdout)["skipped"] == len(ALL_PROMPTS)
