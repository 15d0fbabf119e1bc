"""Deployment manifests for a built bento: what a team needs to run it at scale.

* `bentoml-deployment.yaml`: a BentoML deployment configuration (`bentoml deployment create -f ...`) with
  replicas (min/max), the instance type and the bento's environment;
* `kubernetes.yaml`: a Deployment (replicas, resources, readiness probe on /readyz, liveness probe on /livez,
  Prometheus scrape annotations for /metrics, graceful termination) and a Service, for the image that
  `bentoml containerize TAG` builds.

The bento's own arguments (target, GPUs, concurrency) are read from the BentoML store, so the manifests match
the bento; flags override them.

API keys are referenced, never written: the Deployment sets PACKAGER_API_KEYS from the Secret `<name>-api-keys`
(key `api-keys`; `kubectl create secret generic NAME-api-keys --from-literal=api-keys=KEY1,KEY2`), and the
BentoML deployment names a BentoCloud secret of the same name that sets PACKAGER_API_KEYS.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from packager.errors import ConfigError
from packager.fsutil import atomic_write_text
from packager.serve.auth import ENV_API_KEYS

BENTO_PORT = 3000
SECRET_KEY = "api-keys"  # the key of the API-key Secret the manifests reference


class ManifestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=1, le=1000)
    max_replicas: int | None = Field(None, ge=1, le=1000)
    namespace: str = "default"
    image: str | None = None  # default: the tag `bentoml containerize` gives, <name>:<version>
    cpu: str = "2"
    memory: str = "8Gi"
    gpus: int | None = Field(None, ge=0, le=16)  # default: the bento's tensor_parallel_size on a GPU target
    instance_type: str | None = None  # BentoML deployment instance type, e.g. cpu.4 or gpu.l4.1
    startup_grace_s: int = Field(600, ge=30)  # vLLM needs minutes to start: probes wait this long at most
    termination_grace_s: int = Field(120, ge=5)  # time to drain in-flight requests on shutdown
    # The Secret holding the bento's API keys (key `api-keys`, one or several keys, comma-separated); the
    # manifests reference it and never hold a key. Default: <name>-api-keys.
    api_key_secret: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "ManifestOptions":
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")
        return self


def _k8s_name(text: str) -> str:
    import re

    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-")
    if not name:
        raise ConfigError(f"Cannot make a Kubernetes name from {text!r}.")
    return name


def bento_info(tag: str) -> dict[str, Any]:
    """The bento's name, version, arguments and labels from packager's BentoML store."""
    import os

    from packager.serve.store import bentoml_env

    env = bentoml_env()
    os.environ.setdefault("BENTOML_HOME", env["BENTOML_HOME"])
    import bentoml

    try:
        b = bentoml.bentos.get(tag)
    except Exception as e:  # bentoml raises NotFound and others
        raise ConfigError(f"Bento {tag!r} is not in the BentoML store ({e}); build it with `packager build`.") from None
    return {"name": b.tag.name, "version": b.tag.version, "args": dict(b.info.args or {}),
            "labels": dict(b.info.labels or {})}


def render_manifests(info: dict[str, Any], opts: ManifestOptions) -> dict[str, list[dict[str, Any]] | dict[str, Any]]:
    """Pure: bento info + options -> {"bentoml": deployment config, "kubernetes": [Deployment, Service]}."""
    args = info.get("args", {})
    labels = info.get("labels", {})
    name = _k8s_name(info["name"])
    target = args.get("target", "cpu")
    gpus = opts.gpus if opts.gpus is not None else (int(args.get("tensor_parallel_size", 1)) if target == "gpu" else 0)
    image = opts.image or f"{info['name']}:{info['version']}"
    app_labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "packager",
                  "packager/registry-version": _k8s_name(str(labels.get("packager.registry_version", "unregistered"))),
                  "packager/hardware": _k8s_name(str(labels.get("packager.hardware", target)))}
    resources: dict[str, Any] = {"requests": {"cpu": opts.cpu, "memory": opts.memory},
                                 "limits": {"memory": opts.memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus
        resources["requests"]["nvidia.com/gpu"] = gpus
    probe_period = 10
    container = {
        "name": "bento",
        "image": image,
        "ports": [{"name": "http", "containerPort": BENTO_PORT}],
        "resources": resources,
        # vLLM takes minutes to load: the startup probe holds the other probes back until /livez answers.
        "startupProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": probe_period,
                         "failureThreshold": max(1, opts.startup_grace_s // probe_period)},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5,
                           "timeoutSeconds": 3, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": probe_period,
                          "timeoutSeconds": 5, "failureThreshold": 3},
    }
    env: list[dict[str, Any]] = [{"name": "BENTOML_DO_NOT_TRACK", "value": "True"},
                                 {"name": "VLLM_NO_USAGE_STATS", "value": "1"}]
    container["env"] = env
    secret = opts.api_key_secret or f"{name}-api-keys"
    needs_key = str(args.get("require_api_key", True)).lower() not in ("false", "0", "no")
    if needs_key:
        env.append({"name": ENV_API_KEYS, "valueFrom": {"secretKeyRef": {"name": secret, "key": SECRET_KEY}}})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": dict(app_labels)},
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {
                    "labels": dict(app_labels),
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(BENTO_PORT),
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": {"terminationGracePeriodSeconds": opts.termination_grace_s, "containers": [container]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": dict(app_labels)},
        "spec": {"selector": {"app.kubernetes.io/name": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    bentoml_cfg: dict[str, Any] = {
        "name": name,
        "bento": f"{info['name']}:{info['version']}",
        "access_authorization": True,
        "services": {
            info["name"]: {
                "instance_type": opts.instance_type or (f"gpu.{gpus}" if gpus else f"cpu.{opts.cpu}"),
                "scaling": {"min_replicas": opts.replicas, "max_replicas": opts.max_replicas or opts.replicas},
                "envs": [{"name": "BENTOML_DO_NOT_TRACK", "value": "True"}],
            }
        },
    }
    if needs_key:  # a BentoCloud secret of that name sets PACKAGER_API_KEYS in the deployment
        bentoml_cfg["secrets"] = [secret]
    return {"bentoml": bentoml_cfg, "kubernetes": [deployment, service]}


def validate_kubernetes(docs: list[dict[str, Any]]) -> list[str]:
    """Structural checks of the manifests (what `kubectl apply --dry-run=client` would refuse first)."""
    problems: list[str] = []
    for d in docs:
        for key in ("apiVersion", "kind", "metadata", "spec"):
            if key not in d:
                problems.append(f"{d.get('kind', '?')}: missing {key}")
        name = d.get("metadata", {}).get("name", "")
        if not name or len(name) > 63 or name != _k8s_name(name):
            problems.append(f"{d.get('kind')}: invalid name {name!r}")
        if d.get("kind") == "Deployment":
            spec = d["spec"]
            sel = spec["selector"]["matchLabels"]
            tl = spec["template"]["metadata"]["labels"]
            if any(tl.get(k) != v for k, v in sel.items()):
                problems.append("Deployment: selector does not match the pod template's labels")
            for c in spec["template"]["spec"]["containers"]:
                ports = {p["name"] for p in c.get("ports", [])}
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    p = c.get(probe, {}).get("httpGet", {})
                    if p.get("port") not in ports:
                        problems.append(f"{probe} points at unknown port {p.get('port')!r}")
        if d.get("kind") == "Service":
            if not d["spec"].get("selector"):
                problems.append("Service: no selector")
    return problems


def write_manifests(tag: str, out_dir: str | Path, opts: ManifestOptions | None = None,
                    info: dict[str, Any] | None = None) -> dict[str, Path]:
    opts = opts or ManifestOptions()
    info = info or bento_info(tag)
    docs = render_manifests(info, opts)
    problems = validate_kubernetes(docs["kubernetes"])  # type: ignore[arg-type]
    if problems:
        raise ConfigError("The generated Kubernetes manifests are not valid: " + "; ".join(problems))
    out = Path(out_dir)
    paths = {"bentoml": out / "bentoml-deployment.yaml", "kubernetes": out / "kubernetes.yaml"}
    atomic_write_text(paths["bentoml"], yaml.safe_dump(docs["bentoml"], sort_keys=False))
    atomic_write_text(paths["kubernetes"], yaml.safe_dump_all(docs["kubernetes"], sort_keys=False))
    return paths
