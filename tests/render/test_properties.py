"""Property test: any valid spec renders, for every target, to objects that pass the strict
checks against the real CRDs, with secrets only by reference — or, for a TrainJob, is refused
naming exactly the settings Trainer v2.3 cannot take per job."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.render import RenderError, render
from graft.render.trainjob import RUNTIME_SETTINGS
from graft.spec import parse_spec

from render_specs import TARGETS

label = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
quantity = st.one_of(st.none(), st.sampled_from(["500m", "2", "16"]))
memory = st.one_of(st.none(), st.sampled_from(["512Mi", "4Gi", "64Gi"]))


@st.composite
def resources(draw):
    nodes = draw(st.integers(1, 8))
    procs = draw(st.integers(1, 4))
    out = {
        "nodes": nodes,
        "procsPerNode": procs,
        "gpusPerNode": procs * draw(st.integers(0, 2)),
        "cpu": draw(quantity),
        "memory": draw(memory),
    }
    if draw(st.booleans()):
        out["minNodes"] = draw(st.integers(1, nodes))
        out["maxNodes"] = draw(st.integers(nodes, 16))
    return {k: v for k, v in out.items() if v is not None}


volume = st.builds(
    lambda src, path, ro: {"mountPath": path, "readOnly": ro, **src},
    st.one_of(
        label.map(lambda claim: {"persistentVolumeClaim": claim}),
        label.map(lambda path: {"hostPath": f"/mnt/{path}"}),
        st.just({"emptyDir": True}),
    ),
    st.sampled_from(["/data", "/out", "/ckpt", "/workspace", "/cache"]),
    st.booleans(),
)


env_var = st.one_of(
    st.builds(lambda n, v: {"name": n.upper(), "value": v}, label, st.text(max_size=12)),
    st.builds(lambda n, s, k: {"name": n.upper(), "secretKeyRef": {"name": s, "key": k}}, label, label, label),
)


@st.composite
def kubernetes(draw):
    mounts = draw(st.lists(volume, max_size=3, unique_by=lambda v: v["mountPath"]))
    volumes = [{"name": f"vol{i}", **v} for i, v in enumerate(mounts)]
    out = {
        "env": draw(st.lists(env_var, max_size=4, unique_by=lambda e: e["name"])),
        "envFromSecrets": draw(st.lists(label, max_size=2)),
        "volumes": volumes,
        "nodeSelector": draw(st.dictionaries(label, label, max_size=2)),
        "serviceAccount": draw(st.one_of(st.none(), label)),
        "priorityClass": draw(st.one_of(st.none(), label)),
        "schedulerName": draw(st.one_of(st.none(), st.sampled_from(["volcano", "scheduler-plugins-scheduler"]))),
        # the runtime's values half the time, so TrainJob renders are drawn often too
        "backoffLimit": draw(st.one_of(st.just(RUNTIME_SETTINGS["backoffLimit"]), st.integers(0, 10))),
        "activeDeadlineSeconds": draw(st.one_of(st.none(), st.integers(1, 10**6))),
        "ttlSecondsAfterFinished": draw(st.one_of(st.none(), st.integers(0, 10**5))),
        "cleanPodPolicy": draw(st.sampled_from(["None", "Running", "All"])),
        "raySubmissionMode": draw(st.sampled_from(["K8sJobMode", "HTTPMode", "SidecarMode"])),
        "imagePullPolicy": draw(st.one_of(st.just(RUNTIME_SETTINGS["imagePullPolicy"]), st.sampled_from(["Always", "Never"]))),
    }
    if out["schedulerName"] == "volcano" and draw(st.booleans()):
        out["queue"] = draw(label)
    return {k: v for k, v in out.items() if v is not None}


@st.composite
def specs(draw):
    return parse_spec({
        "metadata": {"name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", fullmatch=True)),
                     "namespace": draw(st.one_of(st.none(), label))},
        "spec": {
            "task": "image-classification",
            "backbone": {"name": "timm/resnet18"},
            "data": {"format": "imagefolder", "train": "/data/train"},
            "strategy": {"phases": [{"epochs": draw(st.integers(1, 5)), "lr": 0.01}]},
            "resources": draw(resources()),
            "suspend": draw(st.booleans()),
            "kubernetes": draw(kubernetes()),
        },
    })


def _trainjob_refusals(job) -> list[str]:
    k8s = job.spec.kubernetes
    fields = {
        "envFromSecrets": k8s.env_from_secrets, "schedulerName": k8s.scheduler_name,
        "queue": k8s.queue, "priorityClass": k8s.priority_class,
    }
    out = [f"kubernetes.{name}" for name, value in fields.items() if value]
    if job.spec.resources.min_nodes is not None:
        out.append("resources.minNodes/maxNodes")
    out += [f"mountPath: {v.mount_path}" for v in k8s.volumes if v.mount_path in ("/tmp", "/workspace")]
    asked = {"backoffLimit": k8s.backoff_limit, "imagePullPolicy": k8s.image_pull_policy}
    out += [f"kubernetes.{field}: {asked[field]} differs" for field, value in RUNTIME_SETTINGS.items()
            if asked[field] != value]
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(job=specs(), target=st.sampled_from(TARGETS))
def test_any_valid_spec_renders_valid_objects(job, target, assert_valid):
    refusals = _trainjob_refusals(job) if target == "trainjob" else []
    try:
        objects = render(job, target)
    except RenderError as exc:
        assert refusals and all(r in str(exc) for r in refusals), str(exc)
        return
    assert not refusals
    assert_valid(objects)
    secret_refs = {v.name: v.secret_key_ref for v in job.spec.kubernetes.env if v.secret_key_ref}
    # The Ray submitter pod carries no user env (it only calls the dashboard).
    pods = {k: v for k, v in objects[1]["spec"].items() if k != "submitterPodTemplate"}
    rendered_env = [e for e in _all_env(pods) if e["name"] in secret_refs]
    assert len(rendered_env) >= len(secret_refs)
    for entry in rendered_env:
        ref = secret_refs[entry["name"]]
        assert entry == {"name": entry["name"], "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _all_env(node):
    """Every env list entry anywhere in an object (pod templates, TrainJob trainer)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from value
            else:
                yield from _all_env(value)
    elif isinstance(node, list):
        for item in node:
            yield from _all_env(item)
