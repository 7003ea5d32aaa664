"""`python -m graft_trainer SPEC.yaml [--output DIR]`: one process of a (possibly distributed)
run. The launcher (torchrun, `graft run`, the Kubeflow operators) sets the distributed env.

Expected endings print one error line (no traceback) and leave it as the termination message:
exit 2 for an invalid spec, 1 for bad data or a missing optional extra (the line names the
`pip install 'graft[...]'`), PREEMPTED_EXIT_CODE after a SIGTERM checkpoint."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from graft.spec import SpecError, load_spec
from graft.spec.contracts import PREEMPTED_EXIT_CODE
from graft.spec.extras import missing_extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graft_trainer", description=__doc__)
    parser.add_argument("spec", help="FineTuneJob YAML file")
    parser.add_argument("--output", help="override spec.output.dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths, never the Hub
    if not sys.stderr.isatty():  # a pipe or a pod log: a redrawn bar is one line per update
        for library in ("HF_HUB", "HF_DATASETS"):  # transformers and the Hub's bars; datasets'
            os.environ.setdefault(f"{library}_DISABLE_PROGRESS_BARS", "1")
    try:
        job = load_spec(args.spec)
        if args.output:
            job.spec.output.dir = args.output
        from graft_trainer.loop import fit  # torch-heavy: only once the spec is known to be valid
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        return _missing(exc)
    from graft_trainer.coordination import Preempted
    from graft_trainer.data import BadDataError

    try:
        fit(job)
    except Preempted as exc:
        return _ended(str(exc), PREEMPTED_EXIT_CODE)
    except SpecError as exc:
        return _ended(f"error: {exc}", 2)
    except BadDataError as exc:
        return _ended(f"error: bad data: {exc}", 1)
    except ImportError as exc:  # e.g. s3fs for s3:// data, scikit-learn for builtin://sklearn-digits
        return _missing(exc)
    return 0


def _missing(exc: ImportError) -> int:
    missing = missing_extra(exc)
    if missing is None:
        raise exc
    return _ended(f"error: {missing}", 1)


def _ended(message: str, code: int) -> int:
    from graft_trainer.report import write_termination_message

    print(message, file=sys.stderr, flush=True)
    write_termination_message(message)
    return code


def _exit_now(code: int) -> None:
    """End the rank without finalising Python. DDP keeps the process group, and Gloo's threads,
    alive after `destroy_process_group` (PyTorch 2.14, even for a bare DistributedDataParallel);
    a finished rank whose Gloo thread touched a tensor while Python finalised died with SIGABRT
    ("terminate called without an active exception", pytorch/pytorch#179291), now and then.
    Everything the run writes is closed by now; the logs and streams are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
