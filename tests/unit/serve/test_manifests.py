import pytest
import yaml

from packager.errors import ConfigError
from packager.serve.manifests import ManifestOptions, render_manifests, validate_kubernetes, write_manifests

INFO = {"name": "packager-w8a8", "version": "abc123", "labels": {"packager.registry_version": "3", "packager.hardware": "cpu"},
        "args": {"target": "cpu", "tensor_parallel_size": 1, "max_num_seqs": 64}}
GPU_INFO = {**INFO, "args": {"target": "gpu", "tensor_parallel_size": 2}}


def test_kubernetes_deployment_has_probes_resources_and_scrape_annotations():
    dep, svc = render_manifests(INFO, ManifestOptions(replicas=3))["kubernetes"]
    assert dep["kind"] == "Deployment" and svc["kind"] == "Service"
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    c = pod["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["image"] == "packager-w8a8:abc123"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert validate_kubernetes([dep, svc]) == []


def test_gpu_bento_requests_its_tensor_parallel_gpus():
    docs = render_manifests(GPU_INFO, ManifestOptions())
    c = docs["kubernetes"][0]["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert docs["bentoml"]["services"]["packager-w8a8"]["instance_type"] == "gpu.2"


def test_bentoml_deployment_scaling():
    cfg = render_manifests(INFO, ManifestOptions(replicas=2, max_replicas=5))["bentoml"]
    assert cfg["bento"] == "packager-w8a8:abc123"
    assert cfg["services"]["packager-w8a8"]["scaling"] == {"min_replicas": 2, "max_replicas": 5}


def test_bad_options_and_broken_manifests_are_refused():
    with pytest.raises(ValueError, match="max_replicas"):
        ManifestOptions(replicas=4, max_replicas=2)
    dep, svc = render_manifests(INFO, ManifestOptions())["kubernetes"]
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "metrics"
    dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "other"
    problems = validate_kubernetes([dep, svc])
    assert any("readinessProbe" in p for p in problems) and any("selector" in p for p in problems)


def test_write_manifests_round_trips_yaml(tmp_path):
    paths = write_manifests("packager-w8a8:abc123", tmp_path, ManifestOptions(replicas=2), info=INFO)
    docs = list(yaml.safe_load_all(paths["kubernetes"].read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    assert yaml.safe_load(paths["bentoml"].read_text())["name"] == "packager-w8a8"


def test_unknown_bento_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "store"))
    with pytest.raises(ConfigError, match="not in the BentoML store"):
        write_manifests("nope:1", tmp_path / "out")


def test_api_keys_come_from_a_secret_the_manifests_only_name():
    dep, _ = render_manifests(INFO, ManifestOptions())["kubernetes"]
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["PACKAGER_API_KEYS"]
    assert "value" not in ref
    assert ref["valueFrom"] == {"secretKeyRef": {"name": f"{dep['metadata']['name']}-api-keys", "key": "api-keys"}}
    cfg = render_manifests(INFO, ManifestOptions(api_key_secret="team-keys"))
    assert cfg["bentoml"]["secrets"] == ["team-keys"]
    dep2 = cfg["kubernetes"][0]
    assert dep2["spec"]["template"]["spec"]["containers"][0]["env"][-1]["valueFrom"]["secretKeyRef"]["name"] == "team-keys"
    # a bento built to serve without keys gets no key wiring
    open_info = {**INFO, "args": {**INFO["args"], "require_api_key": False}}
    docs = render_manifests(open_info, ManifestOptions())
    names = [e["name"] for e in docs["kubernetes"][0]["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "PACKAGER_API_KEYS" not in names and "secrets" not in docs["bentoml"]
