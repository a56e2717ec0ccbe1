"""The ``isolator`` command: ``serve``, ``agent`` and ``demo``, and the on-call commands
``status``, ``explain``, ``isolate`` and ``restore`` (see ``isolator.api.commands``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from isolator import logs
from isolator.api.commands import add_commands
from isolator.settings import AgentSettings, Settings, SettingsFileError


def _settings_error(err: ValidationError) -> str:
    lines = ["invalid settings:"]
    for item in err.errors():
        name = ".".join(str(part) for part in item["loc"]) or "settings"
        lines.append(f"  {name}: {item['msg']}")
    return "\n".join(lines)


def _serve(_: argparse.Namespace) -> int:
    from isolator.api.server import run_service

    settings = Settings()
    logs.configure(json_lines=settings.log_json)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_service(settings))
    return 0


def _agent(_: argparse.Namespace) -> int:
    from isolator.agent.app import run_agent

    settings = AgentSettings()  # required fields come from the environment
    logs.configure(json_lines=False)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_agent(settings))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from isolator.lab.demo import run_demo

    logs.configure(json_lines=False)
    return asyncio.run(run_demo(report=Path(args.report), scenarios=args.scenarios))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isolator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the isolator service (settings: ISOLATOR_*)")
    serve.set_defaults(run=_serve)
    agent = commands.add_parser("agent", help="run a node agent (settings: ISOLATOR_AGENT_*)")
    agent.set_defaults(run=_agent)
    demo = commands.add_parser("demo", help="run the main job in a local lab and report it")
    demo.add_argument("--report", default="demo-report.json", help="path of the JSON report")
    demo.add_argument(
        "--scenarios", default="main", help="scenario set to run: main (default) or all"
    )
    demo.set_defaults(run=_demo)
    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.run(args))
    except ValidationError as err:
        print(_settings_error(err), file=sys.stderr)
        return 2
    except SettingsFileError as err:
        print(f"invalid settings:\n  {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
