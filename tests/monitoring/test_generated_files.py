"""The committed generated files are exactly what the generators produce today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from monitoring_gen.generate import render_all, stale_files, write_all

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_committed_files_match_regenerated(tmp_path: Path) -> None:
    written = write_all(tmp_path)

    differing = [
        str(path.relative_to(tmp_path))
        for path in written
        if not (REPO_ROOT / path.relative_to(tmp_path)).is_file()
        or (REPO_ROOT / path.relative_to(tmp_path)).read_text() != path.read_text()
    ]
    assert differing == [], "generated files changed; run `make generate` and commit them"


def test_no_stale_generated_files() -> None:
    assert stale_files(REPO_ROOT, render_all()) == []


def test_write_all_removes_stale_files(tmp_path: Path) -> None:
    stale = tmp_path / "dashboards" / "json" / "removed-dashboard.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")

    write_all(tmp_path)

    assert not stale.exists()


def test_generator_module_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitoring_gen", "--root", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "alert_rules/isolator.rules.yml" in result.stdout.splitlines()
    assert (tmp_path / "dashboards" / "json" / "isolator-overview.json").is_file()
