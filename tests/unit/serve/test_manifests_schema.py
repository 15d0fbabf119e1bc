"""The generated Kubernetes manifests against the Kubernetes API schema itself (kubernetes-validate, offline: the
OpenAPI schemas ship inside the package), in strict mode, so a misspelt or misplaced field fails as it would on
`kubectl apply --validate=strict`. Every shape the generator can produce is checked: CPU and GPU bentos, with and
without an API key, options set or left to their defaults, and names that need cleaning up."""
from __future__ import annotations

import kubernetes_validate  # a dev dependency (make install): missing, this module fails rather than skips
import pytest
import yaml

from packager.serve.manifests import ManifestOptions, render_manifests, write_manifests

# The oldest Kubernetes minor still in upstream support when this was written, and the newest the package knows:
# the manifests use only stable APIs (apps/v1, v1), so they must hold for both.
VERSIONS = ("1.31.0", kubernetes_validate.latest_version())

CPU = {"name": "packager-w8a8-int8", "version": "abc123",
       "labels": {"packager.registry_version": "3", "packager.hardware": "cpu"},
       "args": {"target": "cpu", "tensor_parallel_size": 1, "max_num_seqs": 64}}
GPU = {"name": "packager-gptq-w4a16", "version": "v7",
       "labels": {"packager.registry_version": "12", "packager.hardware": "nvidia-h100-80gb"},
       "args": {"target": "gpu", "tensor_parallel_size": 2}}
OPEN = {"name": "Packager_GGUF.Q4_K_M", "version": "x1", "labels": {},
        "args": {"target": "cpu", "require_api_key": False}}

CASES = {
    "cpu, defaults": (CPU, ManifestOptions()),
    "cpu, scaled, options": (CPU, ManifestOptions(replicas=3, max_replicas=6, namespace="llm-serving",
                                                  image="registry.example/packager-w8a8-int8:abc123", cpu="4",
                                                  memory="16Gi", startup_grace_s=900, termination_grace_s=30,
                                                  api_key_secret="team-keys")),
    "gpu, tensor parallel 2": (GPU, ManifestOptions()),
    "gpu, one gpu forced": (GPU, ManifestOptions(gpus=1, instance_type="gpu.l4.1")),
    "no api key, name cleaned": (OPEN, ManifestOptions()),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_generated_document_is_valid_kubernetes(case, version):
    info, opts = CASES[case]
    docs = render_manifests(info, opts)["kubernetes"]
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for d in docs:
        # raises ValidationError naming the field; strict: unknown fields are errors too
        kubernetes_validate.validate(d, version, strict=True)


def test_the_written_file_is_what_was_validated(tmp_path):
    """The YAML on disk parses back into documents that pass the same schema (what `kubectl apply -f` reads)."""
    paths = write_manifests("unused:tag", tmp_path, ManifestOptions(replicas=2), info=GPU)
    docs = list(yaml.safe_load_all(paths["kubernetes"].read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for d in docs:
        kubernetes_validate.validate(d, VERSIONS[-1], strict=True)


def test_the_schema_check_can_fail():
    """The validator is live: a manifest with a misspelt field and one with a wrong type are refused."""
    dep, _ = render_manifests(CPU, ManifestOptions())["kubernetes"]
    typo = {**dep, "spec": {**dep["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, VERSIONS[-1], strict=True)
    wrong = {**dep, "spec": {**dep["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, VERSIONS[-1], strict=True)
