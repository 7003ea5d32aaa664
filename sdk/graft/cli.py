"""`graft`: validate, render, run locally, and drive jobs on a cluster.

\b
Exit codes (the same for every command):
  0    success
  1    other error (API refused, already exists, wait timed out)
  2    invalid spec or usage
  3    job not found
  4    job failed
  130  interrupted
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from graft.spec.contracts import PEERING_NAME

EXIT_ERROR, EXIT_INVALID_SPEC, EXIT_NOT_FOUND, EXIT_JOB_FAILED, EXIT_INTERRUPTED = 1, 2, 3, 4, 130

app = typer.Typer(
    name="graft",
    help=__doc__,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Prepare datasets for streaming training.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)


class Target(str, Enum):
    pytorchjob = "pytorchjob"
    rayjob = "rayjob"
    trainjob = "trainjob"


class BackendName(str, Enum):
    local = "local"
    kubernetes = "kubernetes"
    ray = "ray"


class RunBackend(str, Enum):
    local = "local"
    ray = "ray"


SpecPath = Annotated[Path, typer.Argument(help="FineTuneJob YAML file.", show_default=False)]
JobName = Annotated[str, typer.Argument(help="metadata.name of the job.", show_default=False)]
BackendOpt = Annotated[
    BackendName, typer.Option("--backend", "-b", envvar="GRAFT_BACKEND", help="Where the job runs.")
]
NamespaceOpt = Annotated[Optional[str], typer.Option("--namespace", "-n", help="Kubernetes namespace.")]
ContextOpt = Annotated[Optional[str], typer.Option("--context", help="kubeconfig context.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the SDK's exceptions into one readable message and the documented exit code."""
    import urllib3

    from graft.backends.base import JobExists, JobNotFound, WaitTimeout
    from graft.render import RenderError
    from graft.spec import SpecError

    try:
        yield
    except (SpecError, RenderError) as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID_SPEC) from None
    except JobNotFound as exc:
        err.print(f"not found: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_NOT_FOUND) from None
    except (JobExists, WaitTimeout, RuntimeError, OSError, urllib3.exceptions.HTTPError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None


def _client(backend: BackendName, namespace: str | None = None, context: str | None = None):
    from graft.api import Client

    opts = {"namespace": namespace, "context": context} if backend is BackendName.kubernetes else {}
    return Client(backend.value, **{k: v for k, v in opts.items() if v is not None})


def _load(spec: Path):
    from graft.spec import load_spec

    return load_spec(spec)


@app.command()
def validate(spec: SpecPath) -> None:
    """Check a spec; print every problem with the field and the fix (exit 2 if invalid)."""
    with _errors():
        job = _load(spec)
    s = job.spec
    out.print(f"{spec}: valid FineTuneJob '{job.metadata.name}' ({s.task}, {s.backbone.name}, "
              f"{len(s.strategy.phases)} phase(s), {s.strategy.total_epochs} epoch(s))",
              markup=False, highlight=False, soft_wrap=True)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the FineTuneJob document."""
    from graft.spec import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command()
def render(
    spec: SpecPath,
    target: Annotated[Optional[Target], typer.Option(
        "--target", "-t", help="Child kind; defaults to the spec's `backend`.")] = None,
) -> None:
    """Print the manifests for a spec as a YAML stream (pipe into `kubectl apply -f -`)."""
    from graft.render import render as render_objects
    from graft.render import to_yaml

    with _errors():
        job = _load(spec)
    sys.stdout.write(to_yaml(render_objects(job, target.value if target else job.spec.backend)))


@app.command()
def run(
    spec: SpecPath,
    nproc: Annotated[Optional[int], typer.Option(
        "--nproc", min=1, help="Processes; defaults to resources.nodes × procsPerNode.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Overrides output.dir.")] = None,
    backend: Annotated[RunBackend, typer.Option("--backend", "-b")] = RunBackend.local,
) -> None:
    """Run a job here in the foreground with the environment a PyTorchJob pod gets; stream the
    ranks' merged logs; exit 0 if it succeeds, 4 if it fails."""
    from graft.api import Client

    with _errors():
        job = _load(spec)
        if output is not None:
            job.spec.output.dir = str(output)
        client = Client(backend.value, **({"nproc": nproc} if backend is RunBackend.local and nproc else {}))
        ref = client.submit(job)
        try:
            _stream_with_progress(client.logs(ref.name, follow=True))
            status = client.wait(ref.name)
        except KeyboardInterrupt:
            client.suspend(ref.name)
            err.print(f"interrupted: job suspended; `graft resume {ref.name} -b {backend.value}` "
                      f"continues from the newest checkpoint, `graft delete {ref.name} -b "
                      f"{backend.value}` removes it", markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    _finish(status)


def _stream_with_progress(lines: Iterator[str]) -> None:
    """Print the logs; rank 0's `graft-progress` lines drive an epoch bar instead."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("epoch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False, disable=not out.is_terminal) as bar:
        task = None
        for line in lines:
            progress = _progress(line)
            if progress is None or not out.is_terminal:
                out.print(line, markup=False, highlight=False, soft_wrap=True)
            if progress is not None:
                if task is None:
                    task = bar.add_task("", total=progress.get("epochs"))
                accuracy = progress.get("val_accuracy")
                bar.update(task, completed=progress.get("epoch", 0),
                           description=f"val_accuracy {accuracy:.3f}" if isinstance(accuracy, float) else "")


def _progress(line: str) -> dict | None:
    marker = "graft-progress "
    if marker not in line:
        return None
    try:
        return json.loads(line.split(marker, 1)[1])
    except json.JSONDecodeError:
        return None


def _finish(status) -> None:
    style = {"Succeeded": "green", "Failed": "red"}.get(status.phase, "yellow")
    err.print(f"[{style}]{status.name}: {status.phase}[/{style}]"
              + (f" — {status.message}" if status.message else ""), highlight=False, soft_wrap=True)
    if status.phase == "Failed":
        raise typer.Exit(EXIT_JOB_FAILED)


@app.command()
def submit(
    spec: SpecPath, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
) -> None:
    """Validate, then create the job (ConfigMap + PyTorchJob/TrainJob/RayJob on Kubernetes)."""
    with _errors():
        job = _load(spec)
        ref = _client(backend, namespace, context).submit(job)
    out.print(f"submitted {ref.kind or 'job'} {ref.namespace + '/' if ref.namespace else ''}{ref.name}",
              markup=False, highlight=False, soft_wrap=True)


@app.command()
def get(
    name: JobName, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a job's phase, message, times and latest metrics."""
    with _errors():
        status = _client(backend, namespace, context).get(name)
    _print_statuses([status], as_json)


@app.command("list")
def list_jobs(
    backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List Graft jobs."""
    with _errors():
        statuses = _client(backend, namespace, context).list()
    _print_statuses(statuses, as_json)


def _print_statuses(statuses, as_json: bool) -> None:
    if as_json:
        print(json.dumps([s.model_dump(mode="json") for s in statuses], indent=2))
        return
    table = Table("NAME", "PHASE", "STARTED", "FINISHED", "METRICS", "MESSAGE", box=None)
    for s in statuses:
        metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in s.metrics.items() if k in ("epoch", "val_accuracy", "val_loss"))
        table.add_row(s.name, s.phase, _time(s.start_time), _time(s.completion_time), metrics, s.message)
    out.print(table)


def _time(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


@app.command()
def wait(
    name: JobName, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds; exit 1 when exceeded.")] = None,
) -> None:
    """Block until the job succeeds (exit 0) or fails (exit 4); watches, never polls."""
    with _errors():
        status = _client(backend, namespace, context).wait(name, timeout=timeout)
    _finish(status)


@app.command()
def logs(
    name: JobName, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
) -> None:
    """Print all ranks' logs merged, each line prefixed with its rank or pod."""
    with _errors():
        for line in _client(backend, namespace, context).logs(name, follow=follow):
            print(line, flush=follow)


@app.command()
def events(
    name: JobName, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
) -> None:
    """Print the events of the job and its pods."""
    with _errors():
        for line in _client(backend, namespace, context).events(name):
            print(line)


@app.command()
def why(
    name: JobName, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
) -> None:
    """Explain in one paragraph why a job is not running (scheduling, images, quota, volumes)."""
    with _errors():
        print(_client(backend, namespace, context).why(name))


@app.command()
def delete(
    name: JobName, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
) -> None:
    """Stop and remove a job (its pods or processes and its spec ConfigMap)."""
    with _errors():
        _client(backend, namespace, context).delete(name)
    out.print(f"deleted {name}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def suspend(
    name: JobName, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
) -> None:
    """Stop a job's pods/processes but keep the job; `resume` continues from a checkpoint."""
    with _errors():
        _client(backend, namespace, context).suspend(name)
    out.print(f"suspended {name}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def resume(
    name: JobName, backend: BackendOpt = BackendName.kubernetes,
    namespace: NamespaceOpt = None, context: ContextOpt = None,
) -> None:
    """Start a suspended job again."""
    with _errors():
        _client(backend, namespace, context).resume(name)
    out.print(f"resumed {name}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def operator(
    namespace: Annotated[Optional[str], typer.Option(
        "--namespace", "-n", help="Watch only this namespace (default: the whole cluster).")] = None,
    standalone: Annotated[bool, typer.Option(
        help="No peering: for development, when only one instance can run.")] = False,
    peering: Annotated[str, typer.Option(help="kopf peering object name.")] = PEERING_NAME,
    liveness: Annotated[Optional[str], typer.Option(
        help="Liveness endpoint to serve, e.g. http://0.0.0.0:8080/healthz.")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(
        min=1, max=65535, help="Serve Prometheus metrics at /metrics on this port.")] = None,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Run the FineTuneJob operator (kopf) against the current cluster."""
    from graft.operator import run as run_operator

    run_operator(namespace, standalone=standalone, peering_name=peering, liveness_endpoint=liveness,
                 metrics_port=metrics_port, verbose=verbose)


@data_app.command("pack")
def data_pack(
    src: Annotated[Path, typer.Argument(help="ImageFolder directory or JSONL file.")],
    dst: Annotated[Path, typer.Argument(help="Output directory for the tar shards.")],
    shard_size: Annotated[str, typer.Option(help="Bytes per shard, e.g. 512MB.")] = "1GB",
) -> None:
    """Pack a dataset into webdataset tar shards plus index.json."""
    from graft.datapack import pack

    try:
        index = pack(src, dst, shard_size)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID_SPEC) from None
    out.print(f"wrote {len(index.get('shards', []))} shard(s) to {dst}", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
