"""Administration commands: ``env``, ``token``, ``policy``, ``audit ls``, and ``login`` and ``version``."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

import typer

from tessera.client.cli_base import USAGE, Cli, call, describe, exit_code_for, fail, remote, write_token_file

env_app = typer.Typer(no_args_is_help=True, help="Environments: list, create or re-parent.")
token_app = typer.Typer(no_args_is_help=True, help="Service tokens: create, list, revoke, inspect your own.")
policy_app = typer.Typer(no_args_is_help=True, help="Policies: put (from a YAML or JSON file), get, list, remove.")


def register(app: typer.Typer, audit_app: typer.Typer) -> None:
    app.add_typer(env_app, name="env")
    app.add_typer(token_app, name="token")
    app.add_typer(policy_app, name="policy")
    env_app.command(name="ls")(remote(env_ls))
    env_app.command(name="set")(remote(env_set))
    token_app.command(name="create")(remote(token_create))
    token_app.command(name="ls")(remote(token_ls))
    token_app.command(name="revoke")(remote(token_revoke))
    token_app.command(name="self")(remote(token_self))
    policy_app.command(name="put")(remote(policy_put))
    policy_app.command(name="get")(remote(policy_get))
    policy_app.command(name="ls")(remote(policy_ls))
    policy_app.command(name="rm")(remote(policy_rm))
    audit_app.command(name="ls")(remote(audit_ls))
    app.command(name="login")(remote(login))
    app.command(name="version")(remote(version))


# ---------------------------------------------------------------------- environments
def env_ls(cli: Cli) -> None:
    """Every environment and its parent."""
    with cli.client() as client:
        envs = call(client.envs)
    cli.show({"envs": [{"name": e.name, "parent": e.parent} for e in envs]}, ["name", "parent"],
             [(e.name, e.parent) for e in envs])


def env_set(
    cli: Cli,
    name: str = typer.Argument(..., help="the environment to create or re-parent"),
    parent: str = typer.Option("default", "--parent", help="reads fall through to this environment"),
) -> None:
    """Create an environment, or change its parent (admin)."""
    with cli.client() as client:
        env = call(client.put_env, name, parent)
    cli.show({"name": env.name, "parent": env.parent}, text=f"{env.name}: parent {env.parent}")


# ---------------------------------------------------------------------- tokens
def _token_rows(tokens: list[Any]) -> list[tuple[Any, ...]]:
    return [(t.id, t.service, ",".join(t.policies), t.expires_at) for t in tokens]


def token_create(
    cli: Cli,
    service: str = typer.Option(..., "--service", help="the service the token acts as (updated_by, audit)"),
    policies: list[str] = typer.Option(..., "--policy", help="a policy to attach (repeatable)"),
    ttl: int | None = typer.Option(None, "--ttl", min=1, help="seconds until it expires (server default when left out)"),
) -> None:
    """Create a service token (admin). The token string is printed once; only its hash is kept."""
    with cli.client() as client:
        created = call(client.create_token, service, policies, ttl_seconds=ttl)
    if cli.machine:
        cli.dump(created.to_json())
        return
    typer.echo(f"token: {created.token}" if created.token else "token: (not shown: this answer was a replay)")
    cli.show(None, ["id", "service", "policies", "expires_at"], _token_rows([created]))


def token_ls(cli: Cli) -> None:
    """Every token's id, service, policies and expiry (admin); never a token string."""
    with cli.client() as client:
        tokens = call(client.tokens)
    cli.show({"tokens": [t.to_json() for t in tokens]}, ["id", "service", "policies", "expires_at"], _token_rows(tokens))


def token_revoke(cli: Cli, token_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Revoke a token by id (admin): refused everywhere within a second."""
    with cli.client() as client:
        call(client.revoke_token, token_id)
    cli.show({"revoked": token_id}, text=f"revoked {token_id}")


def token_self(cli: Cli) -> None:
    """The calling token's id, service, policies and expiry."""
    with cli.client() as client:
        me = call(client.token_self)
    cli.show(me.to_json(), ["id", "service", "policies", "expires_at"], _token_rows([me]))


# ---------------------------------------------------------------------- policies
def read_rules(path: Path) -> list[dict[str, Any]]:
    """A policy file: ``{"rules": [...]}`` or the list of rules itself, in YAML or JSON."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}", USAGE)
    try:
        document = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        fail(f"{path}: not valid YAML or JSON{where}", USAGE)
    rules = document.get("rules") if isinstance(document, dict) else document
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        fail(f"{path}: a policy file holds `rules:` (a list of rules) or the list itself", USAGE)
    return rules


def _policy_json(policy: Any) -> dict[str, Any]:
    return {"name": policy.name, "rules": policy.rules}


def _rule_rows(policy: Any) -> list[tuple[Any, ...]]:
    return [(policy.name, rule.get("path"), rule.get("effect", "allow"), ",".join(rule.get("capabilities") or []),
             ",".join(rule.get("namespaces") or ["*"]), ",".join(rule.get("envs") or ["*"])) for rule in policy.rules]


POLICY_HEADERS = ["policy", "path", "effect", "capabilities", "namespaces", "envs"]


def policy_put(cli: Cli, name: str = typer.Argument(...), file: Path = typer.Argument(..., help="YAML or JSON rules")) -> None:
    """Create or replace a policy from a file (admin)."""
    rules = read_rules(file)
    with cli.client() as client:
        policy = call(client.put_policy, name, rules)
    cli.show(_policy_json(policy), text=f"{policy.name}: {len(policy.rules)} rule(s)")


def policy_get(cli: Cli, name: str = typer.Argument(...)) -> None:
    """One policy's rules (admin)."""
    with cli.client() as client:
        policy = call(client.policy, name)
    cli.show(_policy_json(policy), POLICY_HEADERS, _rule_rows(policy))


def policy_ls(cli: Cli) -> None:
    """Every policy and its rules (admin)."""
    with cli.client() as client:
        policies = call(client.policies)
    cli.show({"policies": [_policy_json(p) for p in policies]}, POLICY_HEADERS,
             [row for policy in policies for row in _rule_rows(policy)])


def policy_rm(cli: Cli, name: str = typer.Argument(...)) -> None:
    """Delete a policy (admin)."""
    with cli.client() as client:
        call(client.delete_policy, name)
    cli.show({"deleted": name}, text=f"deleted policy {name}")


# ---------------------------------------------------------------------- audit
def audit_ls(
    cli: Cli,
    key: str | None = typer.Option(None, "--key", help="records of this key"),
    service: str | None = typer.Option(None, "--service", help="records of this service"),
    since: str | None = typer.Option(None, "--since", help="after this RFC 3339 time"),
    limit: int | None = typer.Option(None, "--limit", min=1, max=1000, help="newest N (server default 100)"),
) -> None:
    """Audit records from the server, newest first (admin)."""
    with cli.client() as client:
        records = call(client.audit, key=key, service=service, since=since, limit=limit)
    data = [dict(vars(r)) for r in records]
    cli.show({"entries": data}, ["ts", "service", "action", "namespace", "env", "key", "version", "outcome", "status"],
             [(r.ts, r.service, r.action, r.namespace, r.env, r.key, r.version, r.outcome, r.status) for r in records])


# ---------------------------------------------------------------------- login and version
def login(cli: Cli, given: str | None = typer.Argument(None, metavar="[TOKEN]", help="the token (read from stdin when left out)")) -> None:
    """Check a token against the server and keep it for later commands (a 0600 file, as `vault login` does).

    Later commands use it when neither --token nor TESSERA_TOKEN is given. The file is ~/.tessera-token
    (TESSERA_TOKEN_FILE names another)."""
    token = given
    if token is None or token == "-":
        if sys.stdin.isatty():
            token = getpass.getpass("Token (will be hidden): ")
        else:
            token = sys.stdin.readline()
    token = token.strip()
    if not token:
        fail("no token given: tessera login TOKEN, or pipe it on stdin", USAGE)
    cli.token = token
    with cli.client() as client:
        me = call(client.token_self)
    path = write_token_file(token)
    cli.show({**me.to_json(), "token_file": str(path)},
             text=f"logged in as {me.service} (token {me.id}, policies {', '.join(me.policies) or '-'}); token kept in {path}")


def version(cli: Cli) -> None:
    """The CLI's version and the server's (when one answers at --addr)."""
    from tessera import __version__
    from tessera.client.sdk import TesseraError

    server: dict[str, Any] = {"addr": cli.endpoints[0]}
    failed: TesseraError | None = None
    try:
        with cli.client(token_required=False) as client:
            health = client.health()
        server.update(version=health.version or "unknown (older than 0.3)", backend=health.backend)
    except TesseraError as exc:
        failed = exc
        server["error"] = describe(exc)
    data = {"cli": __version__, "server": server}
    if cli.machine:
        cli.dump(data)
    else:
        typer.echo(f"tessera CLI {__version__}")
        if failed is None:
            typer.echo(f"server at {server['addr']}: {server['version']} ({server['backend']} backend)")
    if failed is not None:  # as kubectl does: the CLI's version, then the server's failure as the error
        fail(describe(failed), exit_code_for(failed))

