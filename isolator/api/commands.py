"""The on-call commands of the ``isolator`` CLI: ``status``, ``explain``, ``isolate`` and
``restore``, each a client of the service's HTTP API.

Exit codes: 0 when the API accepted the request, 1 when it returned an error status (its
message is shown), 2 for invalid arguments or settings, when the API cannot be reached and
when its response cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from isolator.api import render
from isolator.api.client import (
    CA_FILE_ENV,
    CLIENT_CERT_FILE_ENV,
    CLIENT_KEY_FILE_ENV,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    TOKEN_FILE_ENV,
    URL_ENV,
    ApiClient,
    ClientError,
    RejectedError,
    ResponseError,
    UsageError,
    client_ssl_context,
    read_token,
    redact_url,
    resolve_url,
    segment,
)

Handler = Callable[[ApiClient, argparse.Namespace], Awaitable[Any]]

# How many of a node's latest audit records `explain` shows.
AUDIT_RECORDS_SHOWN = 5


def positive_seconds(value: str) -> float:
    """Parse a ``--timeout`` value, which must be a finite number of seconds above 0.

    aiohttp 3.14 sets no deadline for a timeout of 0 or less, and a deadline of nan or inf
    never passes, so the command would wait forever for an API that never responds.
    """
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: expected a number of seconds above 0, such as 30"
        )
    return seconds


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the on-call commands to the ``isolator`` parser.

    Every parser turns off prefix matching of options: with it, ``--token SECRET`` would be
    read as ``--token-file SECRET`` and the secret shown in the error about a missing file.
    """
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument(
        "--url", help=f"base URL of the isolator API (default: ${URL_ENV} or {DEFAULT_URL})"
    )
    common.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"file that contains the bearer token (default: ${TOKEN_FILE_ENV}); there is no "
        "option for the token itself, so that it stays out of shell history",
    )
    common.add_argument(
        "--cert-file",
        metavar="PATH",
        help=f"PEM client certificate for an API that requires mutual TLS (default: "
        f"${CLIENT_CERT_FILE_ENV}); set it with --key-file",
    )
    common.add_argument(
        "--key-file",
        metavar="PATH",
        help=f"unencrypted PEM private key of --cert-file (default: ${CLIENT_KEY_FILE_ENV})",
    )
    common.add_argument(
        "--ca-file",
        metavar="PATH",
        help=f"PEM CA bundle that verifies the API's certificate (default: ${CA_FILE_ENV}, "
        "else the system's trust store)",
    )
    common.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for each response (default: %(default)s)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON responses")

    status = commands.add_parser(
        "status",
        parents=[common],
        allow_abbrev=False,
        help="show the global verdict, the regions and isolations",
    )
    status.set_defaults(run=run, handler=show_status)
    explain = commands.add_parser(
        "explain",
        parents=[common],
        allow_abbrev=False,
        help="explain the verdict on a node or region: evidence, rule and safety checks",
    )
    explain.add_argument("name", help="a node name or a region name")
    explain.set_defaults(run=run, handler=explain_target)
    _add_action_commands(commands, common)


def _add_action_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    isolate = commands.add_parser("isolate", help="cut a node, a Pod or a region by hand")
    restore = commands.add_parser("restore", help="end a node's, Pod's or region's isolation")
    isolate_kinds = isolate.add_subparsers(dest="kind", required=True)
    restore_kinds = restore.add_subparsers(dest="kind", required=True)
    targets = {
        "node": "node name",
        "pod": "Pod as NAMESPACE/NAME",
        "region": "region name (a split horizon for its Ingresses)",
    }
    for kind, target_help in targets.items():
        cut = isolate_kinds.add_parser(
            kind, parents=[common], allow_abbrev=False, help=f"isolate a {kind}"
        )
        cut.add_argument("name", help=target_help)
        _add_reason(cut, "why the target is isolated, for the audit")
        cut.add_argument(
            "--ttl",
            type=float,
            metavar="SECONDS",
            help="seconds until the isolation ends with a restore (default: the service's TTL)",
        )
        if kind in ("node", "pod"):
            cut.add_argument(
                "--force",
                action="store_true",
                help="cut even when a Service would keep fewer ready endpoints than its "
                "minimum; the audit records the override",
            )
        if kind == "node":
            cut.add_argument(
                "--scope",
                choices=("node", "component", "ingress"),
                default="node",
                help="what to cut: every Pod (node), the serving gate only with a live kubelet "
                "(component), or the ingress-controller Pods (ingress); default: node",
            )
        cut.set_defaults(run=run, handler=isolate_target)
        undo = restore_kinds.add_parser(
            kind, parents=[common], allow_abbrev=False, help=f"restore a {kind}"
        )
        undo.add_argument("name", help=target_help)
        _add_reason(undo, "why the isolation ends, for the audit")
        undo.set_defaults(run=run, handler=restore_target)


def _add_reason(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--reason", required=True, help=text)
    parser.add_argument(
        "--dry-run", action="store_true", help="plan and audit the action, write nothing"
    )


def run(args: argparse.Namespace) -> int:
    """Run one on-call command and return its exit code."""
    return asyncio.run(execute(args))


async def execute(args: argparse.Namespace) -> int:
    """Run the command's handler against the API, print its output and return the exit code.

    Errors go to stderr as one line that starts with the command's name.
    """
    handler: Handler = args.handler
    try:
        url = resolve_url(args.url)
        token = read_token(args.token_file)
        context = client_ssl_context(url, args.cert_file, args.key_file, args.ca_file)
        async with ApiClient(url, token, args.timeout, context) as client:
            output = await _run_handler(handler, client, args)
    except ClientError as err:
        print(f"isolator {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    print(json.dumps(output, indent=2) if args.json else output)
    return 0


async def _run_handler(handler: Handler, client: ApiClient, args: argparse.Namespace) -> Any:
    """Run ``handler`` and raise ResponseError when the JSON lacks the fields it reads.

    Such JSON comes from another service behind a wrong URL, or from an API of another version.
    """
    try:
        return await handler(client, args)
    except KeyError as err:
        problem = f"field {err.args[0]!r} is missing"
    except (TypeError, AttributeError) as err:
        # NOTE: a bug in a handler or in render raises these too, and reads as a bad response.
        problem = f"a value has the wrong type ({err})"
    raise ResponseError(
        f"{redact_url(client.url)} returned JSON that is not a response of the isolator API: "
        f"{problem}. Check --url or ${URL_ENV}"
    )


async def show_status(client: ApiClient, args: argparse.Namespace) -> Any:
    status, regions, isolations = await asyncio.gather(
        client.get("/v1/status"), client.get("/v1/regions"), client.get("/v1/isolations")
    )
    if args.json:
        return {"status": status, "regions": regions, "isolations": isolations}
    return render.status_text(status, regions, isolations)


async def explain_target(client: ApiClient, args: argparse.Namespace) -> Any:
    name: str = args.name
    node = await _node_or_none(client, name)
    status, regions, isolations = await asyncio.gather(
        client.get("/v1/status"), client.get("/v1/regions"), client.get("/v1/isolations")
    )
    by_name = {item["region"]: item for item in regions}
    if node is not None:
        audit = await client.get("/v1/audit")
        mine = [r for r in audit if name in (r.get("node"), r.get("target"))]
        recent = mine[-AUDIT_RECORDS_SHOWN:]
        region = by_name.get(node["region"])
        isolated = [i for i in isolations if name in (i.get("node"), i.get("target"))]
        if args.json:
            return {
                "node": node,
                "region": region,
                "status": status,
                "isolations": isolated,
                "audit": recent,
            }
        return render.node_text(node, status, region, isolated, recent)
    region = by_name.get(name)
    if region is None:
        raise RejectedError(404, f"no node or region named {name!r}")
    nodes = [n for n in await client.get("/v1/nodes") if n["region"] == name]
    isolated = [i for i in isolations if i.get("region") == name]
    if args.json:
        return {"region": region, "status": status, "nodes": nodes, "isolations": isolated}
    return render.region_text(region, status, nodes, isolated)


async def _node_or_none(client: ApiClient, name: str) -> Any:
    try:
        return await client.get(f"/v1/nodes/{segment(name)}")
    except RejectedError as err:
        if err.status == 404:
            return None
        raise


def _target_path(kind: str, name: str) -> str:
    if kind != "pod":
        return f"/v1/isolations/{kind}s/{segment(name)}"
    namespace, slash, pod = name.partition("/")
    if not slash or not namespace or not pod:
        raise UsageError(f"invalid Pod {name!r}: expected NAMESPACE/NAME")
    return f"/v1/isolations/pods/{segment(namespace)}/{segment(pod)}"


async def isolate_target(client: ApiClient, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"reason": args.reason, "dry_run": args.dry_run}
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    if args.kind in ("node", "pod"):
        body["force"] = args.force
    if args.kind == "node":
        body["scope"] = args.scope
    reply = await client.post(_target_path(args.kind, args.name), body)
    if args.json:
        return reply.body
    return render.action_text("isolate", f"{args.kind} {args.name}", reply.status, reply.body)


async def restore_target(client: ApiClient, args: argparse.Namespace) -> Any:
    body = {"reason": args.reason, "dry_run": args.dry_run}
    reply = await client.post(_target_path(args.kind, args.name) + "/restore", body)
    if args.json:
        return reply.body
    return render.action_text("restore", f"{args.kind} {args.name}", reply.status, reply.body)
