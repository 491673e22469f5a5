"""The shipped default Whisper: assembled from its two packages, checked against the manifest,
used by the service when nothing else is configured; Simplified Chinese and prompt echoes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from asr import default_model
from asr.errors import DefaultModelError
from asr.text import echoes_prompt, to_simplified

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.unit]


def _fake_packages(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> default_model.DefaultModelSpec:
    """Two importable data packages shaped like the real pair, and a manifest for them."""
    site = tmp / "site"
    one, two = site / "fake_part_one" / "data", site / "fake_part_two" / "data"
    for folder in (one, two):
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
    (one / "model.bin.part1").write_bytes(b"A" * 1000)
    (two / "model.bin.part2").write_bytes(b"B" * 500)
    (one / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(site))
    files = {"model.bin": hashlib.sha256(b"A" * 1000 + b"B" * 500).hexdigest(),
             "config.json": hashlib.sha256(b"{}").hexdigest()}
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps({"models": [{
        "name": "whisper-base", "files": files, "licence": "MIT",
        "source": {"version": "9.9", "assemble": {"model.bin": ["model.bin.part1",
                                                                "model.bin.part2"]},
                   "packages": [{"distribution": "fake-one", "module": "fake_part_one"},
                                {"distribution": "fake-two", "module": "fake_part_two"}]}}]}))
    return default_model.load_spec(manifest)


def test_parts_are_joined_verified_and_reused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fake_packages(tmp_path, monkeypatch)
    assert default_model.ready_dir(spec, tmp_path / "cache") is None
    folder = default_model.install(spec, tmp_path / "cache")
    assert folder.name == "whisper-base-9.9"
    assert (folder / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 500
    assert default_model.ready_dir(spec, tmp_path / "cache") == folder
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert default_model.install(spec, tmp_path / "cache") == folder
    assert (folder / "model.bin").stat().st_mtime_ns == stamp  # not rebuilt


def test_a_part_that_does_not_match_the_manifest_installs_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fake_packages(tmp_path, monkeypatch)
    part = Path(default_model.package_data_dir("fake-two", "fake_part_two")) / "model.bin.part2"
    part.write_bytes(b"B" * 499 + b"X")
    with pytest.raises(DefaultModelError, match="model.bin: sha256"):
        default_model.install(spec, tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no half-built folder left


def test_a_missing_package_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fake_packages(tmp_path, monkeypatch)
    broken = default_model.DefaultModelSpec(
        spec.name, spec.version, (("fake-one", "fake_part_one"), ("absent-pkg", "absent_pkg")),
        spec.parts, spec.files, spec.licence)
    with pytest.raises(DefaultModelError, match="absent-pkg is not installed"):
        default_model.install(broken, tmp_path / "cache")


def test_the_real_default_is_installed_and_verified() -> None:
    proc = subprocess.run([sys.executable, "-m", "asr.default_model", "install"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    folder = Path(result["model_dir"])
    spec = default_model.load_spec()
    assert (folder / "model.bin").stat().st_size == 145_217_532
    assert default_model.verify_folder(folder, spec) == []
    assert folder.parent.parent != ROOT  # in the cache, outside the clone


def test_the_service_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from ivr.service import default_model_dir
    from ivr.settings import Settings

    monkeypatch.delenv("IVR_ASR__MODEL_DIR", raising=False)
    assert default_model_dir(Settings(), cuda=False) == default_model.installed_dir()
    explicit = Settings.model_validate({"asr": {"model_dir": "/somewhere/else"}})
    assert default_model_dir(explicit) == Path("/somewhere/else")


def test_the_model_is_chosen_by_device_not_by_folder_order(tmp_path: Path) -> None:
    from ivr.service import default_model_dir
    from ivr.settings import Settings

    settings = Settings(models_dir=tmp_path)
    # Folders an operator left around, one sorting before everything: never picked unasked.
    for name in ("aaa-test-model", "large-v3-turbo"):
        (tmp_path / "whisper" / name).mkdir(parents=True)
        (tmp_path / "whisper" / name / "model.bin").write_bytes(b"x")
    assert default_model.gpu_option() == "whisper/large-v3-turbo"
    assert default_model_dir(settings, cuda=False) == default_model.installed_dir()
    assert default_model_dir(settings, cuda=True) == tmp_path / "whisper" / "large-v3-turbo"
    (tmp_path / "whisper" / "large-v3-turbo" / "model.bin").unlink()  # not really there
    assert default_model_dir(settings, cuda=True) == default_model.installed_dir()


@pytest.mark.parametrize(("text", "expected"), [
    ("那個 我的帳號被盜了", "那个 我的帐号被盗了"),
    ("服務器當機了 幾個小時", "服务器当机了 几个小时"),
    ("I want to check my bill", "I want to check my bill"),
    ("我想查一下我的账单", "我想查一下我的账单"),
])
def test_traditional_characters_become_simplified(text: str, expected: str) -> None:
    assert to_simplified(text) == expected


@pytest.mark.parametrize(("text", "echo"), [
    ("账单，账号，人工客服。", True),
    ("人工客服 工单 扩容", True),
    ("账单", False),  # a one-word answer that is in the prompt is still an answer
    ("我想查一下我的账单", False),
    ("", False),
])
def test_prompt_echoes_are_recognised(text: str, echo: bool) -> None:
    prompt = "账单 发票 账号 密码 宕机 工单 扩容 投诉 人工客服"
    assert echoes_prompt(text, prompt) is echo
    assert echoes_prompt(text, None) is False
