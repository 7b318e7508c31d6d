"""``slipway``: validate pipeline files and run pipelines from a terminal.

slipway validate [FILE ...]        check pipeline files, print every problem
slipway run REPOSITORY [options]   run the pipeline flow, print where to watch it
slipway example [options]          run the pipeline on the bundled example app
slipway approval-code [NAME]       the current TOTP code of an approver of the example
slipway server                     make sure a local Prefect server is running
slipway webhook [options]          receive signed push webhooks, emit slipway.push events
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slipway.exceptions import ConfigError, SlipwayError, SpecError
from slipway.interrupt import cancellable, exit_code
from slipway.spec_loader import DEFAULT_SPEC_FILE, load_pipeline


def _validate(args: argparse.Namespace) -> int:
    status = 0
    for name in args.files or [DEFAULT_SPEC_FILE]:
        try:
            pipeline = load_pipeline(Path(name), display_name=name)
        except SpecError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        count = len(pipeline.all_stages())
        print(f"{name}: valid ({pipeline.app}, {count} stages)")
    return status


def _env_pairs(values: list[str]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env expects NAME=VALUE, got {item!r}")
        env[key] = value
    return env


def _run_pipeline(
    repository: str,
    args: argparse.Namespace,
    prepare: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
    **extra: Any,
) -> int:
    from prefect.settings import temporary_settings

    from slipway.local_server import ensure_server

    access = ensure_server()
    with (
        temporary_settings(access.settings()),
        prepare() if prepare else contextlib.nullcontext(),
    ):
        from slipway.flows.pipeline import run_pipeline
        from slipway.report import DEPLOY_ICONS, stage_line

        run_pipeline = cancellable(run_pipeline)  # Ctrl-C / SIGTERM cancel the run cleanly
        state = run_pipeline(
            repository=repository,
            branch=args.branch,
            commit=args.commit,
            base=args.base,
            stages=args.stage or None,
            skip_stages=args.skip or None,
            env=_env_pairs(args.env or []),
            notifier=args.notifier,
            refresh_cache=args.refresh_cache,
            environments=args.environment,
            keep_workspace=args.keep_workspace,
            **extra,
        )
        report = state.result(raise_on_failure=False)
    print()
    if hasattr(report, "stages"):
        for stage in report.stages:
            print(stage_line(stage))
        for env in report.environments:
            note = f"  {env.reason}" if env.reason else ""
            print(
                f"  deploy {env.name:<11} {DEPLOY_ICONS[env.status]:<14} {env.seconds:7.2f} s{note}"
            )
        if report.failed_stage and report.failed_stage not in {s.name for s in report.stages}:
            print(f"  {report.failed_stage}: {report.reason}")  # checkout, load-spec, ...
        print(f"\n{report.app} @ {report.sha[:12]}: {report.status} in {report.seconds:.1f} s")
        if report.pushed_image is not None:
            print(f"image pushed: {report.pushed_image.ref}")
        if report.workspace:
            print(f"workspace kept: {report.workspace}")
        if report.run_url:
            print(f"watch it in the Prefect UI: {report.run_url}")
            if access.auth_string:
                print(f"  (log in with the API auth string: {access.where_to_find()})")
    else:
        print(f"pipeline ended in state {state.name}: {state.message}")
    return exit_code(state)


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def repository_argument(text: str) -> str:
    """What ``slipway run`` was given, as the flow's ``repository``.

    Read the way git reads a remote: a URL (``https://``, ``ssh://``, ``file://``) as
    it is; a path (``.``, ``..``, ``./x``, ``../x``, ``/abs``, ``~/x``, or anything that
    exists on disk) made absolute, since the flow runs elsewhere; ``host:path`` as git's
    ssh form; anything else names an ``AppRepository`` block.
    """
    if _URL_SCHEME.match(text):
        return text
    path = Path(text).expanduser()
    looks_like_path = text in (".", "..") or text.startswith(("/", "./", "../", "~"))
    if looks_like_path or path.exists():
        resolved = path.resolve()
        if not resolved.exists():
            raise ConfigError(f"repository path {text!r} does not exist ({resolved})")
        bare = (resolved / "HEAD").is_file() and (resolved / "objects").is_dir()
        if not bare and not (resolved / ".git").exists():
            raise ConfigError(f"{resolved} is not a git repository (no .git, and not bare)")
        return str(resolved)
    return text  # git's ssh form or a block name: both go as they are


def _run(args: argparse.Namespace) -> int:
    from slipway.urls import check_repository_reference

    try:  # before any server or run: a run's parameters are stored
        check_repository_reference(args.repository)
    except ValueError as exc:
        raise SystemExit(f"slipway run: {exc}") from None
    return _run_pipeline(repository_argument(args.repository), args)


def _example(args: argparse.Namespace) -> int:
    import os

    from slipway.example import publish_example
    from slipway.local_docker import ensure_base_image, ensure_engine, ensure_registry

    engine, started = ensure_engine()
    os.environ["DOCKER_HOST"] = engine  # the image stages' DockerHost() reads it
    print(f"Docker engine: {engine}" + (" (started, left running)" if started else ""))
    ensure_base_image(engine)
    print(f"image registry: {ensure_registry(5000)} (the example pushes there)")
    url = publish_example()
    print(f"published examples/example-app to {url}")
    args.example_url = url
    return _run_pipeline(url, args, lambda: _example_delivery(args), cluster=None)


@contextlib.contextmanager
def _example_delivery(args: argparse.Namespace) -> Iterator[object]:
    """The example's CD half: a SIMULATED cluster, its blocks, traffic, approvals."""
    from slipway.example_delivery import (
        AUTO_APPROVER,
        HUMAN_APPROVER,
        AutoApprover,
        Traffic,
        publish_manifests,
        save_example_blocks,
    )
    from slipway.local_cluster import ensure_local_cluster

    cluster = ensure_local_cluster(pods=args.pods)  # logs that it is SIMULATED
    manifests = publish_manifests()
    print(f"GitOps manifests repository: {manifests}")
    save_example_blocks(cluster, manifests, args.example_url)
    if args.approve_automatically:
        print(f"production approval: automatic, as {AUTO_APPROVER} (--approve-automatically)")
    else:
        print(
            "production approval: the run pauses; open it in the Prefect UI, press Resume and "
            f"approve as {HUMAN_APPROVER} with the code `slipway approval-code` prints (or "
            "rerun with --approve-automatically)"
        )
    with (
        Traffic(cluster),
        AutoApprover() if args.approve_automatically else contextlib.nullcontext(),
    ):
        yield cluster


def _approval_code(args: argparse.Namespace) -> int:
    import time

    from slipway.example_delivery import example_approvers

    approvers = example_approvers(create=False)
    if args.approver not in approvers:
        raise ConfigError(
            f"the example has no approver {args.approver!r} (it has: {', '.join(approvers)})"
        )
    entry = approvers[args.approver]
    if args.uri:
        print(entry.provisioning_uri())  # holds the secret: for an authenticator app
    else:
        left = 30 - int(time.time()) % 30
        print(f"{entry.totp().now()}  ({args.approver}; valid about {left + 30} s more, once)")
    return 0


def _server(_args: argparse.Namespace) -> int:
    from slipway.local_server import AUTH_STRING_FILE, ensure_server
    from slipway.workspace import slipway_home

    access = ensure_server()
    url = access.api_url
    print(
        f"Prefect API: {url}\nPrefect UI:  {url.removesuffix('/api')} (log in with the auth string)"
    )
    if access.auth_string:
        where = slipway_home() / "prefect" / AUTH_STRING_FILE
        print(
            f"clients and workers need:\n  export PREFECT_API_URL={url}\n"
            f'  export PREFECT_API_AUTH_STRING="$(cat {where})"'
        )
    return 0


def _webhook(args: argparse.Namespace) -> int:
    import logging

    from prefect.settings import temporary_settings

    from slipway.local_server import ensure_server
    from slipway.webhook import EVENT_NAME, WebhookServer, load_secret

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    secret = None if args.secret_block else load_secret()  # fail before any server starts
    access = ensure_server()
    api_url = access.api_url
    with temporary_settings(access.settings()):
        server = WebhookServer(
            secret=secret or load_secret(args.secret_block),
            host=args.host,
            port=args.port,
            max_body=args.max_body,
            max_connections=args.max_connections,
            request_deadline=args.request_deadline,
        )
        print(f"listening on {server.url}; pushes become {EVENT_NAME} events on {api_url}")
        sys.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--branch", help="branch to build (default: the repository's)")
    parser.add_argument("--commit", help="tag or full SHA to build")
    parser.add_argument("--base", help="base commit for changesets")
    parser.add_argument(
        "--stage", action="append", help="run only this stage and what it needs (repeatable)"
    )
    parser.add_argument("--skip", action="append", help="skip this stage (repeatable)")
    parser.add_argument("--env", action="append", metavar="NAME=VALUE", help="pipeline env")
    parser.add_argument("--notifier", help="SlackNotifier block name")
    parser.add_argument("--refresh-cache", action="store_true", help="rerun every stage")
    parser.add_argument(
        "--keep-workspace",
        action="store_true",
        help="keep the workspace after a successful run too (retention: "
        "SLIPWAY_KEEP_WORKSPACES, SLIPWAY_WORKSPACE_MAX_AGE_DAYS)",
    )
    parser.add_argument(
        "--environment", action="append", help="deploy only to this environment (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slipway", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check pipeline files without running anything")
    validate.add_argument("files", nargs="*", help=f"pipeline files (default: {DEFAULT_SPEC_FILE})")
    validate.set_defaults(handler=_validate)
    run = sub.add_parser("run", help="run the pipeline of a repository")
    run.add_argument(
        "repository",
        help="clone URL, local path (., ./x, /abs, file://...) or AppRepository block name",
    )
    _add_run_options(run)
    run.set_defaults(handler=_run)
    example = sub.add_parser("example", help="run the pipeline on the bundled example app")
    _add_run_options(example)
    example.add_argument(
        "--approve-automatically",
        action="store_true",
        help="approve production as example-bot instead of waiting in the Prefect UI",
    )
    example.add_argument(
        "--pods",
        choices=("process", "docker"),
        default="process",
        help="what backs the simulated cluster's pods (default: local processes)",
    )
    example.set_defaults(handler=_example)
    code = sub.add_parser(
        "approval-code", help="the current TOTP code of an approver of the bundled example"
    )
    code.add_argument("approver", nargs="?", default="you@example.com", help="approver name")
    code.add_argument(
        "--uri", action="store_true", help="print the otpauth:// URI for an authenticator app"
    )
    code.set_defaults(handler=_approval_code)
    server = sub.add_parser("server", help="start (or find) the local Prefect server")
    server.set_defaults(handler=_server)
    webhook = sub.add_parser(
        "webhook", help="receive signed push webhooks and emit slipway.push Prefect events"
    )
    webhook.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    webhook.add_argument("--port", type=int, default=8787, help="port (default: 8787)")
    webhook.add_argument(
        "--secret-block",
        help="Prefect Secret block with the shared secret (default: $SLIPWAY_WEBHOOK_SECRET)",
    )
    webhook.add_argument(
        "--max-body",
        type=int,
        default=5 * 1024 * 1024,
        help="largest body accepted, in bytes (default: 5 MiB)",
    )
    webhook.add_argument(
        "--max-connections",
        type=int,
        default=16,
        help="requests served at once; more are answered 503 (default: 16)",
    )
    webhook.add_argument(
        "--request-deadline",
        type=float,
        default=15.0,
        help="seconds a client has for its whole request (default: 15)",
    )
    webhook.set_defaults(handler=_webhook)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SlipwayError as exc:
        print(f"slipway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
