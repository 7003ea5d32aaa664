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

import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from graft.spec.contracts import PEERING_NAME, PROGRESS_MARK, Progress, read_progress, read_result
from graft.spec.extras import missing_extra

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
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Direct = Annotated[bool, typer.Option(
    "--direct", help="On Kubernetes, create the child job (PyTorchJob, TrainJob, RayJob) itself instead of a "
    "FineTuneJob: for clusters without Graft's operator.")]
# The options every command that drives a job shares; `_job_command` adds them.
JOB_OPTIONS = [
    inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=BackendName.kubernetes,
                      annotation=Annotated[BackendName, typer.Option(
                          "--backend", "-b", envvar="GRAFT_BACKEND", help="Where the job runs.")]),
    inspect.Parameter("namespace", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Optional[str], typer.Option(
                          "--namespace", "-n", help="Kubernetes namespace.")]),
    inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Optional[str], typer.Option("--context", help="kubeconfig context.")]),
]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the SDK's exceptions into one readable message and the documented exit code."""
    import urllib3

    from graft.backends.base import JobExists, JobNotFound, WaitTimeout
    from graft.render import RenderError
    from graft.spec import SpecError

    try:
        yield
    except typer.Exit:
        raise
    except (SpecError, RenderError) as exc:
        _fail(str(exc), EXIT_INVALID_SPEC)
    except JobNotFound as exc:
        _fail(f"not found: {exc}", EXIT_NOT_FOUND)
    except ImportError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        _fail(f"error: {missing}", EXIT_ERROR)
    except (JobExists, WaitTimeout, RuntimeError, OSError, urllib3.exceptions.HTTPError) as exc:
        _fail(f"error: {exc}", EXIT_ERROR)


def _fail(message: str, code: int) -> NoReturn:
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _job_command(fn: Callable) -> Callable:
    """`fn(connect, ...)` as a command with the shared --backend/--namespace/--context options:
    they are declared once (JOB_OPTIONS), `connect()` builds the client from them (when the
    command needs it, so a spec is checked before any cluster is), and expected errors end as
    one line and the documented exit code."""
    own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]

    def command(*, backend: BackendName, namespace: str | None, context: str | None, **kwargs: Any) -> None:
        with _errors():
            fn(functools.partial(_client, backend, namespace, context), **kwargs)

    command.__signature__ = inspect.Signature([*own, *JOB_OPTIONS])  # what typer reads
    command.__name__, command.__doc__ = fn.__name__, fn.__doc__
    return command


def _client(backend: BackendName, namespace: str | None = None, context: str | None = None, **kubernetes: Any):
    from graft.api import Client

    opts = {"namespace": namespace, "context": context, **kubernetes} if backend is BackendName.kubernetes else {}
    return Client(backend.value, **{k: v for k, v in opts.items() if v is not None})


def _load(spec: Path):
    from graft.spec import load_spec

    return load_spec(spec)


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


@app.command()
def validate(spec: SpecPath) -> None:
    """Check a spec; print every problem with the field and the fix (exit 2 if invalid)."""
    with _errors():
        job = _load(spec)
    s = job.spec
    _say(f"{spec}: valid FineTuneJob '{job.metadata.name}' ({s.task}, {s.backbone.name}, "
         f"{len(s.strategy.phases)} phase(s), {s.strategy.total_epochs} epoch(s))")


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
    """Run a job here in the foreground with the environment a PyTorchJob pod gets; show one
    line per epoch and the ranks' other output; exit 0 if it succeeds, 4 if it fails."""
    from graft.api import Client

    with _errors():
        job = _load(spec)
        if output is not None:
            job.spec.output.dir = str(output)
        client = Client(backend.value, **({"nproc": nproc} if backend is RunBackend.local and nproc else {}))
        ref = client.submit(job)
        try:
            _show(client.logs(ref.name, follow=True))
            status = client.wait(ref.name)
        except KeyboardInterrupt:
            client.suspend(ref.name)
            _fail(f"interrupted: job suspended; `graft resume {ref.name} -b {backend.value}` continues "
                  f"from the newest checkpoint, `graft delete {ref.name} -b {backend.value}` removes it",
                  EXIT_INTERRUPTED)
    _finish(status)


def _show(lines: Iterable[str]) -> None:
    """Log lines for people. A `graft-progress` line (one per epoch, for the operator) becomes
    one readable line and, on a terminal, moves a live epoch bar; `graft-result` lines, for
    programs, are left out. Both stay as they are in the job's log and in metrics.jsonl."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("epoch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=out, transient=True, disable=not out.is_terminal) as bar:
        task = None
        for line in lines:
            if read_result(line) is not None:
                continue
            progress = read_progress(line)
            if progress is None:
                _say(line)
                continue
            _say(line.partition(PROGRESS_MARK)[0] + describe(progress))
            if task is None:
                task = bar.add_task("", total=progress.epochs)
            left = f"{_duration(progress.eta_s)} left" if progress.eta_s is not None else ""
            bar.update(task, completed=progress.epoch, description=left)


def describe(progress: Progress) -> str:
    """'epoch 2/4 head-only: loss 0.412 / val 0.301, accuracy 0.871 / val 0.913, 1,234
    samples/s, 35 s left', leaving out what the line does not carry."""
    def pair(train: float | None, val: float | None) -> str:
        return " / ".join(f"{label}{value:.3f}" for label, value in (("", train), ("val ", val))
                          if value is not None)

    parts = [f"epoch {progress.epoch}/{progress.epochs}" + (f" {progress.phase}" if progress.phase else "")]
    stats = []
    if progress.train_loss is not None or progress.val_loss is not None:
        stats.append("loss " + pair(progress.train_loss, progress.val_loss))
    if progress.train_accuracy is not None or progress.val_accuracy is not None:
        stats.append("accuracy " + pair(progress.train_accuracy, progress.val_accuracy))
    if progress.samples_per_s is not None:
        stats.append(f"{progress.samples_per_s:,.0f} samples/s")
    if progress.eta_s is not None:
        stats.append(f"{_duration(progress.eta_s)} left" if progress.epoch < progress.epochs else "done")
    return parts[0] + (": " + ", ".join(stats) if stats else "")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _finish(status) -> None:
    style = {"Succeeded": "green", "Failed": "red"}.get(status.phase, "yellow")
    err.print(f"[{style}]{status.name}: {status.phase}[/{style}]"
              + (f" — {status.message}" if status.message else ""), highlight=False, soft_wrap=True)
    if status.phase == "Failed":
        raise typer.Exit(EXIT_JOB_FAILED)


@app.command()
@_job_command
def submit(connect, spec: SpecPath, direct: Direct = False) -> None:
    """Validate, then create the job: a FineTuneJob that Graft's operator runs, where the
    cluster serves the CRD; else (or with --direct) the PyTorchJob/TrainJob/RayJob itself."""
    job = _load(spec)
    ref = connect(**({"direct": True} if direct else {})).submit(job)
    _say(f"submitted {ref.kind or 'job'} {ref.namespace + '/' if ref.namespace else ''}{ref.name}")
    if ref.note:
        err.print(f"note: {ref.note}", markup=False, highlight=False, soft_wrap=True)


@app.command()
@_job_command
def get(connect, name: JobName, as_json: AsJson = False) -> None:
    """Show a job's phase, message, times and latest metrics."""
    _print_statuses([connect().get(name)], as_json)


@app.command("list")
@_job_command
def list_jobs(connect, as_json: AsJson = False) -> None:
    """List Graft jobs."""
    _print_statuses(connect().list(), as_json)


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
@_job_command
def wait(
    connect, name: JobName,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds; exit 1 when exceeded.")] = None,
) -> None:
    """Block until the job succeeds (exit 0) or fails (exit 4); watches, never polls."""
    _finish(connect().wait(name, timeout=timeout))


@app.command()
@_job_command
def logs(
    connect, name: JobName,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
) -> None:
    """Print all ranks' logs merged, each line prefixed with its rank or pod; one readable line
    per epoch."""
    _show(connect().logs(name, follow=follow))


@app.command()
@_job_command
def events(connect, name: JobName) -> None:
    """Print the events of the job and its pods."""
    for line in connect().events(name):
        _say(line)


@app.command()
@_job_command
def why(connect, name: JobName) -> None:
    """Explain in one paragraph why a job is not running (scheduling, images, quota, volumes)."""
    _say(connect().why(name))


def _change(verb: str, done: str, doc: str) -> None:
    """Register `graft VERB NAME`, which calls the client's `verb` and says it was done."""
    def command(connect, name: JobName) -> None:
        getattr(connect(), verb)(name)
        _say(f"{done} {name}")

    command.__name__, command.__doc__ = verb, doc
    app.command(verb)(_job_command(command))


_change("delete", "deleted", "Stop and remove a job (its pods or processes and its spec ConfigMap).")
_change("suspend", "suspended", "Stop a job's pods/processes but keep the job; `resume` continues from a checkpoint.")
_change("resume", "resumed", "Start a suspended job again.")


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
    with _errors():
        from graft.operator import run as run_operator

        run_operator(namespace, standalone=standalone, peering_name=peering, liveness_endpoint=liveness,
                     metrics_port=metrics_port, verbose=verbose)


@data_app.command("pack")
def data_pack(
    src: Annotated[Path, typer.Argument(help="ImageFolder directory or JSONL file.")],
    dst: Annotated[Path, typer.Argument(help="Output directory for the tar shards.")],
    shard_size: Annotated[str, typer.Option(help="Bytes per shard, e.g. 512MB.")] = "1GB",
) -> None:
    """Pack a dataset into webdataset tar shards plus index.json and a members file per shard."""
    from graft.datapack import pack

    try:
        index = pack(src, dst, shard_size)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"error: {exc}", EXIT_INVALID_SPEC)
    _say(f"wrote {len(index.get('shards', []))} shard(s) to {dst}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
