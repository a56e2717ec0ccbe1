"""The service's settings file: read under ISOLATOR_CONFIG_FILE, overridden by the environment,
and rejected with the setting named when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from isolator import cli
from isolator.settings import Settings, SettingsFileError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "isolator.yaml"
    path.write_text(text)
    return path


def test_file_sets_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "prometheus_url: http://central:9090\nheartbeat_interval_s: 2.0\nauth_disabled: true\n"
    path = write(tmp_path, text)
    monkeypatch.setenv("ISOLATOR_CONFIG_FILE", str(path))

    settings = Settings()

    assert settings.prometheus_url == "http://central:9090"
    assert settings.heartbeat_interval_s == 2.0


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "prometheus_url: http://from-file:9090\nauth_disabled: true\n")
    monkeypatch.setenv("ISOLATOR_CONFIG_FILE", str(path))
    monkeypatch.setenv("ISOLATOR_PROMETHEUS_URL", "http://from-env:9090")

    assert Settings().prometheus_url == "http://from-env:9090"


def test_unknown_key_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOLATOR_CONFIG_FILE", str(write(tmp_path, "prometheus_ulr: x\n")))

    with pytest.raises(ValueError, match="prometheus_ulr"):
        Settings()


def test_missing_file_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOLATOR_CONFIG_FILE", str(tmp_path / "absent.yaml"))

    with pytest.raises(SettingsFileError, match=r"ISOLATOR_CONFIG_FILE=.*absent\.yaml"):
        Settings()


def test_list_instead_of_mapping_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOLATOR_CONFIG_FILE", str(write(tmp_path, "- a\n- b\n")))

    with pytest.raises(SettingsFileError, match="expected a mapping"):
        Settings()


def test_invalid_value_named_by_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ISOLATOR_CONFIG_FILE", str(write(tmp_path, "heartbeat_miss_count: 0\n")))

    code = cli.main(["serve"])

    assert code == 2
    assert "heartbeat_miss_count" in capsys.readouterr().err


def test_broken_file_named_by_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ISOLATOR_CONFIG_FILE", str(write(tmp_path, "a: [unclosed\n")))

    code = cli.main(["serve"])

    assert code == 2
    assert "ISOLATOR_CONFIG_FILE" in capsys.readouterr().err
