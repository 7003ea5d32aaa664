"""What the renderers promise users and the operator: valid objects against the real CRDs, the
trainer contract (container, command, spec mount), no secret values, ownership, determinism."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import yaml

from graft.render import JOB_LABEL, RenderError, render
from graft.render.trainjob import render_training_runtime
from graft.spec import parse_spec
from render_specs import TARGETS, reference_spec

OWNER = {
    "apiVersion": "graft.dev/v1alpha1",
    "kind": "FineTuneJob",
    "name": "flowers-resnet",
    "uid": "0d4f2c9e-1111-2222-3333-444455556666",
    "controller": True,
    "blockOwnerDeletion": True,
}


def _pod_specs(obj: dict) -> list[dict]:
    spec = obj["spec"]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    if obj["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
        return [cluster["headGroupSpec"]["template"]["spec"]] + [
            g["template"]["spec"] for g in cluster["workerGroupSpecs"]
        ]
    patch = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    return [rj["template"]["spec"]["template"]["spec"] for rj in patch["replicatedJobs"]]


@pytest.mark.parametrize("target", TARGETS)
def test_configmap_carries_the_spec_the_pods_mount(target):
    job = reference_spec(target)
    configmap, child = render(job, target, owner=OWNER)
    assert configmap["metadata"]["name"] == f"{job.metadata.name}-spec"
    assert parse_spec(configmap["data"]["spec.yaml"]) == job
    assert child["metadata"]["name"] == job.metadata.name
    for obj in (configmap, child):
        assert obj["metadata"]["labels"][JOB_LABEL] == job.metadata.name
        assert obj["metadata"]["ownerReferences"] == [OWNER]
        assert obj["metadata"].get("namespace") == job.metadata.namespace
    for pod in _pod_specs(child):
        assert {"name": "graft-spec", "configMap": {"name": configmap["metadata"]["name"]}} in pod["volumes"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "graft-spec", "mountPath": "/etc/graft", "readOnly": True} in mounts


def test_pytorchjob_runs_torchrun_in_a_restricted_pytorch_container():
    _, job = render(reference_spec("pytorchjob"), "pytorchjob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {k: r["replicas"] for k, r in replicas.items()} == {"Master": 1, "Worker": 1}
    assert job["spec"]["nprocPerNode"] == "2"
    pod = replicas["Master"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "pytorch"
    assert container["command"] == ["torchrun", "--module", "graft_trainer", "/etc/graft/spec.yaml"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "graft-tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {
        "minAvailable": 2, "queue": "research", "priorityClass": "high"
    }


def test_elastic_pytorchjob_uses_workers_only_with_bounds():
    doc = reference_spec("pytorchjob").to_document()
    doc["spec"]["resources"].update(nodes=3, minNodes=2, maxNodes=5)
    _, job = render(parse_spec(doc), "pytorchjob")
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert job["spec"]["elasticPolicy"]["minReplicas"] == 2
    assert job["spec"]["elasticPolicy"]["maxReplicas"] == 5


def test_rayjob_sizes_one_worker_pod_per_process():
    _, job = render(reference_spec("rayjob"), "rayjob")
    spec = job["spec"]
    assert spec["entrypoint"] == "python -m graft_trainer.ray_train /etc/graft/spec.yaml"
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (4, 2, 8)
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["image"] == "registry.example.com/graft-trainer-ray:0.1.0"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]


def test_rayjob_head_lends_its_cpus_to_ray_data_only_when_ray_data_reads(assert_valid):
    """Training workers take every worker pod's CPUs: Ray Data's read tasks run on the head."""
    document = reference_spec("rayjob").to_document()
    assert render(parse_spec(document), "rayjob")[1]["spec"]["rayClusterSpec"]["headGroupSpec"][
        "rayStartParams"]["num-cpus"] == "0"
    document["spec"]["data"].update(format="jsonl", streaming=True, validation="s3://bucket/reviews/val.jsonl")
    document["spec"]["ray"]["ingest"] = "ray-data"
    objects = render(parse_spec(document), "rayjob")
    assert_valid(objects)
    assert objects[1]["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"] == {"dashboard-host": "0.0.0.0"}


def test_rayjob_submitter_pod_is_restricted_labelled_and_left_to_kuberay_to_command():
    _, job = render(reference_spec("rayjob"), "rayjob")
    template = job["spec"]["submitterPodTemplate"]
    assert template["metadata"]["labels"][JOB_LABEL] == "reviews-minilm"
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    (submitter,) = pod["containers"]
    assert submitter["image"] == "registry.example.com/graft-trainer-ray:0.1.0"
    # KubeRay writes its `ray job submit` script into the first container only when it has no command.
    assert "command" not in submitter and "args" not in submitter
    security = submitter["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "graft-tmp", "mountPath": "/tmp"} in submitter["volumeMounts"]
    assert submitter["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert "AWS_SECRET_ACCESS_KEY" not in {e["name"] for e in submitter["env"]}


@pytest.mark.parametrize("mode", ["HTTPMode", "SidecarMode"])
def test_rayjob_without_a_submitter_job_renders_no_submitter_template(mode):
    """KubeRay refuses submitterPodTemplate in SidecarMode; HTTPMode runs no submitter pod."""
    doc = reference_spec("rayjob").to_document()
    doc["spec"]["kubernetes"]["raySubmissionMode"] = mode
    _, job = render(parse_spec(doc), "rayjob")
    assert job["spec"]["submissionMode"] == mode
    assert "submitterPodTemplate" not in job["spec"]


def test_trainjob_references_the_runtime_and_sizes_nodes():
    _, job = render(reference_spec("trainjob"), "trainjob")
    spec = job["spec"]
    assert spec["runtimeRef"]["name"] == "graft-torch-distributed"
    assert (spec["trainer"]["numNodes"], spec["trainer"]["numProcPerNode"]) == (3, 4)
    assert spec["trainer"]["resourcesPerNode"]["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert spec["suspend"] is True


@pytest.mark.parametrize(
    ("field", "value"),
    [("envFromSecrets", ["creds"]), ("priorityClass", "high"), ("schedulerName", "volcano"),
     ("backoffLimit", 5), ("imagePullPolicy", "Always")],
)
def test_trainjob_refuses_settings_it_cannot_express(field, value):
    doc = reference_spec("trainjob").to_document()
    doc["spec"]["kubernetes"][field] = value
    with pytest.raises(RenderError, match=f"kubernetes.{field}"):
        render(parse_spec(doc), "trainjob")


def test_the_runtime_carries_the_per_runtime_settings_a_trainjob_cannot():
    """A TrainJob cannot set its Job's retries or pull policy: Graft's runtime carries the
    spec's defaults, so a job that keeps them gets exactly what it asked for."""
    node_job = render_training_runtime("trainer:1")["spec"]["template"]["spec"]["replicatedJobs"][0]
    assert node_job["template"]["spec"]["backoffLimit"] == reference_spec("trainjob").spec.kubernetes.backoff_limit
    container = node_job["template"]["spec"]["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == reference_spec("trainjob").spec.kubernetes.image_pull_policy


def test_trainjob_refuses_env_the_torch_plugin_sets():
    """The Trainer's webhook refuses these (tests/controllers/test_trainjob.py shows it)."""
    doc = reference_spec("trainjob").to_document()
    doc["spec"]["kubernetes"]["env"] = [{"name": "PET_MASTER_PORT", "value": "1234"}]
    with pytest.raises(RenderError, match=r"kubernetes.env\[0\].name: PET_MASTER_PORT"):
        render(parse_spec(doc), "trainjob")


def test_unknown_target_names_the_choices():
    with pytest.raises(RenderError, match="pytorchjob, rayjob, trainjob"):
        render(reference_spec("pytorchjob"), "mpijob")


@pytest.mark.parametrize("target", TARGETS)
def test_rendering_is_deterministic_and_shares_no_state(target):
    job = reference_spec(target)
    first = render(job, target)
    snapshot = copy.deepcopy(first)
    first[1]["spec"].clear()
    assert render(job, target) == snapshot
    assert json.dumps(render(job, target)) == json.dumps(snapshot)  # same key order too


@pytest.mark.parametrize("target", TARGETS)
def test_secret_references_stay_references(target):
    job = reference_spec(target)
    text = yaml.safe_dump_all(render(job, target))
    refs = [v.secret_key_ref for v in job.spec.kubernetes.env if v.secret_key_ref]
    assert refs
    for ref in refs:
        assert f"key: {ref.key}" in text and f"name: {ref.name}" in text
    assert "stringData" not in text and "kind: Secret" not in text


def test_pytorchjob_round_trips_through_kubeflow_training_models():
    """kubeflow-training drops keys its models do not know: a lossy round trip is a bad key."""
    from kubeflow.training import ApiClient

    client = ApiClient()
    for doc in (reference_spec("pytorchjob"), reference_spec("rayjob")):
        _, job = render(doc, "pytorchjob", owner=OWNER)
        model = client.deserialize(SimpleNamespace(data=json.dumps(job)), "KubeflowOrgV1PyTorchJob")
        assert client.sanitize_for_serialization(model) == job


@pytest.mark.parametrize("target", TARGETS)
def test_pods_get_the_checkpoint_grace_period_plus_a_margin(target):
    """A preempted pod must live long enough for the trainer's SIGTERM checkpoint, and
    torchrun must not kill its workers before it is written."""
    job = reference_spec(target)
    job.spec.checkpoint.grace_period_seconds = 90
    child = render(job, target)[-1]
    pods = _pod_specs(child)
    if target == "rayjob":
        pods.append(child["spec"]["submitterPodTemplate"]["spec"])
    assert pods and all(pod["terminationGracePeriodSeconds"] == 100 for pod in pods)
    envs = [c["env"] for pod in pods for c in pod["containers"] if "env" in c and c["name"] != "ray-job-submitter"]
    if target == "trainjob":
        envs = [child["spec"]["trainer"]["env"]]
    assert all({"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": "95"} in env for env in envs)
