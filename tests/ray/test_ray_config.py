"""How a FineTuneJob becomes Ray Train's configuration, and what the SDK reads back from a Ray
job's log. Fast: real Ray config objects, no cluster started."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from graft.render import render
from graft.spec import SpecError
from ray_jobs import tiny_job

ray_train = pytest.importorskip("graft_trainer.ray_train")


def test_one_ray_worker_per_process_with_the_pods_share_of_cpus_and_gpus(tmp_path):
    job = tiny_job("big", tmp_path, resources={"nodes": 2, "procsPerNode": 2, "gpusPerNode": 4, "cpu": "3"})
    scaling = ray_train.scaling_config(job)
    assert scaling.num_workers == 4
    assert scaling.use_gpu is True
    assert scaling.resources_per_worker == {"CPU": 1.5, "GPU": 2.0}


def test_cpu_only_job_asks_one_cpu_per_worker_by_default(tmp_path):
    scaling = ray_train.scaling_config(tiny_job("cpu", tmp_path))
    assert (scaling.num_workers, scaling.use_gpu, scaling.resources_per_worker) == (2, False, {"CPU": 1.0})


@pytest.mark.parametrize(("text", "cpus"), [("4", 4.0), ("500m", 0.5), ("1.5", 1.5)])
def test_kubernetes_cpu_quantities(text, cpus):
    assert ray_train.cpu_quantity(text) == cpus


def test_unreadable_cpu_quantity_names_the_field():
    with pytest.raises(SpecError, match="resources.cpu"):
        ray_train.cpu_quantity("4 cores")


def test_run_config_carries_name_storage_failures_and_checkpoint_policy(tmp_path):
    job = tiny_job("keep", tmp_path, checkpoint={"keepLast": 3}, ray={"maxFailures": 2},
                   training={"bestMetric": "val_loss"})
    config = ray_train.run_config(job)
    assert config.name == "keep"
    assert config.storage_path == f"{tmp_path}/ray"  # default: <output.dir>/ray
    assert config.failure_config.max_failures == 2
    checkpoints = config.checkpoint_config
    assert (checkpoints.num_to_keep, checkpoints.checkpoint_score_attribute,
            checkpoints.checkpoint_score_order) == (3, "val_loss", "min")


def test_accuracy_is_kept_highest_first(tmp_path):
    assert ray_train.run_config(tiny_job("acc", tmp_path)).checkpoint_config.checkpoint_score_order == "max"


def test_relative_paths_are_resolved_because_ray_workers_change_directory(tmp_path):
    job = tiny_job("paths", Path("runs/out"), ray={"storagePath": "s3://bucket/ray"},
                   checkpoint={"dir": "ckpt"})
    resolved = ray_train.with_absolute_paths(job, tmp_path)
    assert resolved.spec.output.dir == str(tmp_path / "runs/out")
    assert resolved.spec.checkpoint.dir == str(tmp_path / "ckpt")
    assert resolved.spec.ray.storage_path == "s3://bucket/ray"  # URLs untouched
    assert resolved.spec.data.train == "builtin://sklearn-digits"


def test_the_rendered_rayjob_runs_this_entry_point(tmp_path):
    rayjob = render(tiny_job("rendered", tmp_path), "rayjob")[1]
    python, flag, module, spec_path = rayjob["spec"]["entrypoint"].split()
    assert (python, flag) == ("python", "-m")
    assert importlib.util.find_spec(module).origin == ray_train.__file__
    assert spec_path == "/etc/graft/spec.yaml"


def test_status_metrics_come_from_prefixed_worker_lines_and_the_final_result():
    from graft.backends.ray import latest_metrics

    log = "\n".join([
        "(RayTrainWorker pid=11) graft-progress {\"epoch\": 1, \"epochs\": 3, \"val_accuracy\": 0.4}",
        "(RayTrainWorker pid=11) graft-progress {\"epoch\": 2, \"epochs\": 3, \"val_accuracy\": 0.6}",
        "(RayTrainWorker pid=11) graft-progress {broken",
    ])
    assert latest_metrics(log) == {"epoch": 2, "epochs": 3, "val_accuracy": 0.6}
    done = log + '\ngraft-result {"checkpoint": "/s/step-30", "summary": {"val_accuracy": 0.7, "epochs_run": 3}}'
    assert latest_metrics(done) == {"epoch": 2, "epochs": 3, "val_accuracy": 0.7, "epochs_run": 3,
                                    "checkpoint": "/s/step-30"}


def test_sdk_ray_backend_imports_neither_ray_nor_torch():
    code = ("import sys, graft.backends.ray; "
            "print(sorted({'ray', 'torch', 'graft_trainer'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sdk_ray_backend_targets_ray_address_like_ray_job_submit(monkeypatch):
    from graft.backends.ray import RayBackend

    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert RayBackend().address == "http://head:8265"
    assert RayBackend(address="http://other:8265").address == "http://other:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    assert RayBackend().address is None  # a local head, started on first use


@pytest.mark.parametrize(("data", "problem"), [
    ({"format": "imagefolder", "train": "/data/train", "validation": "/data/val"}, "data.format webdataset"),
    ({"format": "webdataset", "train": "/data/shards"}, "separate data.validation"),
    ({"format": "jsonl", "train": "/data/t.jsonl", "validation": "/data/v.jsonl"}, "data.streaming"),
])
def test_ray_data_ingest_needs_whole_streamed_shards_and_a_validation_location(tmp_path, data, problem):
    with pytest.raises(SpecError, match=problem):
        tiny_job("ingest", tmp_path, data=data, ray={"ingest": "ray-data"})


def test_ray_data_ingest_outside_ray_train_is_refused_before_anything_trains(tmp_path):
    from graft_trainer.loop import fit

    job = tiny_job("ingest", tmp_path, ray={"ingest": "ray-data"},
                   data={"format": "webdataset", "train": str(tmp_path / "train"), "validation": str(tmp_path / "val")})
    with pytest.raises(SpecError, match="spec.ray.ingest: 'ray-data' feeds Ray Train workers"):
        fit(job)
    assert not (tmp_path / "checkpoints").exists()
