"""The `tenantry` command: one console script, a subcommand per service and tool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tenantry.api.cli import api_command
from tenantry.contract.crds import render_crds
from tenantry.contract.manifests import ManifestError, load_manifests
from tenantry.dev import dev_command
from tenantry.operator.cli import operator_command
from tenantry.settings import get_settings
from tenantry.worker.commands import audit_app, beat, worker_app

app = typer.Typer(
    name="tenantry",
    help="Kubernetes-native, multi-tenant API platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def crds(
    out: Annotated[Path, typer.Option(help="Folder to write the CRD files into.")] = Path("crds"),
    check: Annotated[
        bool, typer.Option(help="Only report whether the folder is up to date.")
    ] = False,
) -> None:
    """Generate the CustomResourceDefinitions from the contract models."""
    rendered = render_crds()
    if check:
        stale = [name for name, text in rendered.items() if _read(out / name) != text]
        if stale:
            typer.echo(
                f"out of date: {', '.join(stale)} (run `tenantry crds --out {out}`)", err=True
            )
            raise typer.Exit(1)
        typer.echo(f"{out}: up to date")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text)
        typer.echo(f"wrote {out / name}")


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Manifest files or folders.")],
) -> None:
    """Check ApiTenant, RateLimitPolicy, ApiPlatform and ApiProduct manifests without a
    cluster."""
    namespace = get_settings().platform_namespace
    try:
        found = load_manifests(paths, namespace)
    except ManifestError as error:
        for problem in error.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1) from error
    typer.echo(
        f"ok: {len(found.policies)} policies, {len(found.tenants)} tenants, "
        f"{len(found.platforms)} platforms, {len(found.products)} products "
        f"({sum(len(p.spec.routes) for p in found.products.values())} upstream routes)"
    )


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (the chart runs this as a pre-install/upgrade hook)."""
    from tenantry.db.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


app.command("api")(api_command)
app.command("dev")(dev_command)
app.add_typer(worker_app, name="worker")
app.add_typer(audit_app, name="audit")
app.command("beat")(beat)
app.command("operator")(operator_command)


def main() -> None:
    app()
