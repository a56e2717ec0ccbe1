"""Render every generated file and write it under a root folder."""

from __future__ import annotations

from pathlib import Path

from alert_rules.rules import RULES_FILE_NAME, rule_groups
from dashboards import build_all
from dashboards.export import render
from monitoring_gen import deploy
from monitoring_gen.yaml_output import render_yaml, render_yaml_documents

DASHBOARD_DIR = Path("dashboards") / "json"
RULES_DIR = Path("alert_rules")
DEPLOY_DIR = Path("deploy") / "monitoring"

# Folders whose generated files this module owns: a file there that it no longer renders is
# stale, and the drift check reports it.
OWNED = {DASHBOARD_DIR: "*.json", RULES_DIR: "*.rules.yml", DEPLOY_DIR: "*.yml"}


def render_all() -> dict[Path, str]:
    """Return the text of every generated file by its path relative to the repository."""
    files = {DASHBOARD_DIR / name: render(data) for name, data in sorted(build_all().items())}
    files[RULES_DIR / RULES_FILE_NAME] = render_yaml(rule_groups(), "alert_rules/rules.py")
    source = "monitoring_gen/deploy.py"
    files[DEPLOY_DIR / "edge-prometheus.yml"] = render_yaml(deploy.edge_prometheus(), source)
    files[DEPLOY_DIR / "central-prometheus.yml"] = render_yaml(deploy.central_prometheus(), source)
    files[DEPLOY_DIR / "alertmanager.yml"] = render_yaml(deploy.alertmanager(), source)
    files[DEPLOY_DIR / "prometheus-rule.yml"] = render_yaml(deploy.prometheus_rule(), source)
    files[DEPLOY_DIR / "service-monitors.yml"] = render_yaml_documents(
        deploy.service_monitors(), source
    )
    return files


def stale_files(root: Path, rendered: dict[Path, str]) -> list[Path]:
    """Return files under ``root`` in the owned folders that ``rendered`` does not contain."""
    stale = []
    for folder, pattern in OWNED.items():
        for path in sorted((root / folder).glob(pattern)):
            if path.relative_to(root) not in rendered:
                stale.append(path)
    return stale


def write_all(root: Path) -> list[Path]:
    """Write every generated file under ``root``, remove stale ones, return what was written."""
    rendered = render_all()
    for path in stale_files(root, rendered):
        path.unlink()
    written = []
    for relative, text in rendered.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
