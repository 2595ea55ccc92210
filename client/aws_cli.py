"""`tessera aws ...`: create the aws backend's resources (`init`) and collect orphaned value objects (`gc`).

Both act on the endpoint of the environment: real AWS by default, moto server or LocalStack with
``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import json
import shlex

import typer

app = typer.Typer(no_args_is_help=True)

BucketOption = typer.Option("tessera-values", envvar="TESSERA_BUCKET", help="S3 bucket for value objects")
TableOption = typer.Option("tessera", envvar="TESSERA_TABLE", help="DynamoDB table")
KeyOption = typer.Option("alias/tessera", envvar="TESSERA_KMS_KEY_ID", help="KMS key: id, ARN or alias (an alias is created if missing)")
RegionOption = typer.Option(None, envvar=["AWS_REGION", "AWS_DEFAULT_REGION"], help="AWS region")
EndpointOption = typer.Option(None, envvar="AWS_ENDPOINT_URL", help="endpoint (moto server, LocalStack)")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


@app.command()
def init(
    bucket: str = BucketOption,
    table: str = TableOption,
    kms_key_id: str = KeyOption,
    region: str | None = RegionOption,
    endpoint_url: str | None = EndpointOption,
) -> None:
    """Create the bucket, table and KMS key (idempotent) and print the `export` lines that use them."""
    from tessera.core.backends.aws import AwsClients
    from tessera.core.backends.aws_setup import provision

    region = region or "us-east-1"
    plain_http = bool(endpoint_url and endpoint_url.startswith("http://"))
    clients = AwsClients.create(region, endpoint_url)
    try:
        result = provision(clients, bucket=bucket, table=table, kms_key_id=kms_key_id, region=region, tls_only=not plain_http)
    except Exception as exc:  # botocore's errors carry the useful text; print it, not a stack trace
        _fail(f"could not create the aws resources: {exc}")
        return
    created = ", ".join(result.created) or "nothing (all existed)"
    typer.echo(f"# created: {created}", err=True)
    if plain_http:
        typer.echo("# plain-HTTP endpoint: the bucket's TLS-only policy was not applied (it would refuse every request)", err=True)
    exports = {
        "TESSERA_BACKEND": "aws",
        "TESSERA_BUCKET": result.bucket,
        "TESSERA_TABLE": result.table,
        "TESSERA_KMS_KEY_ID": result.kms_key_id,
        "AWS_REGION": region,
    }
    if endpoint_url:
        exports["AWS_ENDPOINT_URL"] = endpoint_url
    for name, value in exports.items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@app.command()
def gc(
    bucket: str = BucketOption,
    table: str = TableOption,
    region: str | None = RegionOption,
    endpoint_url: str | None = EndpointOption,
    grace_seconds: float = typer.Option(3600.0, help="leave objects younger than this (commits in flight)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="report orphans without deleting them"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Delete value objects that no version points at (left by a crash between the S3 put and the commit)."""
    from tessera.core.backends.aws import AwsClients, AwsStore
    from tessera.core.errors import TesseraError

    clients = AwsClients.create(region or "us-east-1", endpoint_url)
    store = AwsStore(table=table, bucket=bucket, dynamodb=clients.dynamodb, s3=clients.s3, calls=clients.calls)
    try:
        report = store.collect_orphans(grace_seconds=grace_seconds, dry_run=dry_run)
    except TesseraError as exc:
        _fail(exc.message)
        return
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"scanned {report.scanned} value objects; {len(report.orphans)} orphaned; {verb} {len(report.orphans) if dry_run else report.deleted}")
    for name in report.orphans:
        typer.echo(f"  {name}")
