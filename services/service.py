"""The packager bento: ONE service template, parameterised by its arguments (packager/serve/args.py).

    packager build VARIANT_DIR            # imports the model, runs `bentoml build`, prints the bento tag
    bentoml serve TAG                     # or: packager serve TAG

Layout of a running replica:

    client ──HTTP──> BentoML server (this service, port 3000 by default)
                       front door    (packager.serve.frontdoor) before everything else: API keys (401),
                                     only the routes below (404/405), body size and time (413/408),
                                     Retry-After on 429/503
                       /v1/chat/completions, /v1/completions, /v1/models
                                     gateway (packager.serve.gateway): relays to the backend with httpx,
                                     bounds work (n x prompts, max_tokens, stream time) and observes TTFT,
                                     TPOT, E2E, tokens and outcomes -> packager_* series
                       /readyz       200 once the backend answers its readiness path (no key needed)
                       /livez        200 while the backend process lives (no key needed)
                       /metrics      BentoML's series + packager_* + the backend's (vllm:*, llamacpp:*) merged (no key
                                     needed unless PACKAGER_METRICS_TOKEN is set)
                     `__command__`: packager.serve.supervise -> the backend, an OpenAI server on
                                     127.0.0.1:<backend_port>: vLLM or llama-server. The supervisor lets in-flight
                                     requests drain on SIGTERM; a backend that dies on its own is started
                                     again by the worker (watchdog below; /livez 200, /readyz 503 meanwhile).

Before any worker starts, `bentoml serve` runs `verify_model` (an on_deployment hook, in the serving
process): the bento needs an API key (unless built with require_api_key=false), and the model files' sha256
must match what was recorded at import and the digest this bento was built for; otherwise it refuses to
start, with a message, and exits non-zero. The watchdog verifies the files again before it restarts a
backend, and leaves it stopped (/livez and /readyz 503) when they changed.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import bentoml

from packager.serve.args import BentoArgs, deployment_overrides
from packager.serve import frontdoor
from packager.serve.backends import BACKENDS, launch_command
from packager.serve.gateway import Gateway
from packager.serve.integrity import MODEL_SUBDIR

logger = logging.getLogger("bentoml.service")

args = deployment_overrides(bentoml.use_arguments(BentoArgs))
backend = BACKENDS.get(args.backend)
model_ref = bentoml.models.BentoModel(args.model_tag)


def _create_metrics():
    from packager.serve.metrics import ServiceMetrics

    return ServiceMetrics(args.metric_labels(), args.usd_per_hour)


gateway = Gateway(f"http://127.0.0.1:{args.backend_port}", concurrency=args.concurrency_per_worker,
                  metrics_factory=_create_metrics, limits=args.request_limits())


def _api_keys() -> list[str]:
    """The keys this bento accepts, read from where it runs; refuses to start without one when it must."""
    from packager.errors import ConfigError
    from packager.serve.auth import ENV_API_KEYS, ENV_API_KEYS_FILE, load_api_keys

    try:
        keys = load_api_keys()
    except ConfigError as e:
        _refuse_to_start(str(e), ConfigError.exit_code)
    if not keys and args.require_api_key:
        _refuse_to_start(f"this bento requires an API key and was given none. Set {ENV_API_KEYS} (one or several "
                         f"keys, comma-separated) or {ENV_API_KEYS_FILE} (a file of keys, one per line) where it "
                         "runs, or build it with `--arg require_api_key=false` to serve without keys.",
                         ConfigError.exit_code)
    if not keys:
        logger.warning("packager: serving WITHOUT API keys (require_api_key=false): anyone who reaches the port "
                       "can use it")
    return keys


def _refuse_to_start(why: str, code: int) -> NoReturn:
    msg = f"packager: refusing to serve {args.model_tag}: {why}"
    logger.error(msg)
    print(msg, file=sys.stderr, flush=True)
    raise SystemExit(code)


def _front_door(app):
    """The outermost layer of the service's HTTP app (packager/serve/frontdoor.py), built in each worker."""
    from packager.serve.auth import KeyCheck, load_metrics_token

    token = load_metrics_token()
    return frontdoor.FrontDoor(app, KeyCheck(_api_keys()), KeyCheck([token]) if token else None,
                               max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout_s,
                               on_refused=gateway.count_refused,
                               open_paths=frontdoor.OPEN_PATHS | {backend.readiness_path})


frontdoor.install(_front_door)


def _image() -> bentoml.images.Image:
    # The Python requirements shared by every target are in bentofile.yaml; the backend's are per target.
    packages = list(backend.python_packages(args.target))
    if args.require_approved:  # the approval is read from the registry when the bento starts
        packages.append(f"mlflow=={MLFLOW_VERSION}")
    image = bentoml.images.Image(python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
                                 lock_python_packages=False)
    if system := backend.system_packages(args.target):
        image = image.system_packages(*system)
    if packages:
        image = image.python_packages(*packages)
    for command in backend.image_commands(args.target):  # e.g. compile llama-server for the image's CPU
        image = image.run(command)
    return image


MLFLOW_VERSION = "3.17.2"  # the registry's client, as pinned in pyproject.toml


def _check_approved() -> None:
    """require_approved: the registry (PACKAGER_REGISTRY_URI) must hold this version as approved now."""
    from packager.errors import PackagerError
    from packager.registry.gate import check_serving_approval

    name = args.registry_name or args.model_name
    if args.registry_version == "unregistered":
        _refuse_to_start("require_approved is set but this bento serves no registry version (build it with "
                         "--registry-name and --registry-version).", PackagerError.exit_code)
    try:
        ok, why = check_serving_approval(name, args.registry_version)
    except PackagerError as e:
        _refuse_to_start(f"its approval could not be checked: {e}", e.exit_code)
    if not ok:
        _refuse_to_start(why, PackagerError.exit_code)
    logger.info("packager: %s", why)


def _verify_model_files() -> None:
    """The stored model's files against the sha256 recorded at import and the digest the bento was built for
    (raises packager.errors.IntegrityError): before the first start and before every restart of the backend."""
    from packager.serve.integrity import verify_model_files

    stored = model_ref.resolve()
    verify_model_files(Path(stored.path) / MODEL_SUBDIR, stored.info.metadata, args.model_digest,
                       f"BentoML model {args.model_tag}")


DRAIN_MARGIN_S = 30.0
# A backend that dies on its own is started again by the worker, after 1, 2, 4, ... s; more than
# MAX_BACKEND_RESTARTS within RESTART_WINDOW_S ends the worker instead (BentoML then starts a fresh one,
# or, in a container, the orchestrator's liveness probe restarts the replica).
MAX_BACKEND_RESTARTS = 5
RESTART_WINDOW_S = 600.0


async def _backend_watchdog(instance) -> None:
    """Restart the backend when its supervisor reports an exit nobody asked for (a non-zero exit code).

    While the new backend starts, /livez answers 200 (the worker and a backend process live) and /readyz
    and inference answer 503 (the backend does not answer yet): an orchestrator waits instead of killing
    the replica. A stop the worker asked for (shutdown) exits 0 and ends the watch.
    """
    import asyncio
    import os
    import signal
    import time

    import anyio
    import anyio.to_thread

    state = PackagerLLM.context.state
    while "proc" not in state:  # set by BentoML's proxy once the backend answered its health path
        await asyncio.sleep(0.5)
    proc = state["proc"]
    if proc is None:  # another worker started the backend
        return
    restarts: list[float] = []
    while True:
        code = await proc.wait()
        if code == 0 or state.get("stopping"):
            return
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(restarts) > MAX_BACKEND_RESTARTS:
            msg = (f"packager: the backend exited unexpectedly (supervisor exit code {code}) "
                   f"{len(restarts)} times within {RESTART_WINDOW_S:g} s; ending this worker")
            logger.error(msg)
            print(msg, file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        delay_s = 2.0 ** (len(restarts) - 1)
        msg = (f"packager: the backend exited unexpectedly (supervisor exit code {code}); starting it again in "
               f"{delay_s:g} s (restart {len(restarts)} of at most {MAX_BACKEND_RESTARTS} per {RESTART_WINDOW_S:g} s)")
        logger.error(msg)
        print(msg, file=sys.stderr, flush=True)
        await asyncio.sleep(delay_s)
        if state.get("stopping"):
            return
        try:  # the files may have changed since the bento started: never start a backend on altered weights
            await anyio.to_thread.run_sync(_verify_model_files)
        except Exception as e:  # IntegrityError, or files gone
            msg = (f"packager: not starting the backend again: the model failed verification ({e}). /livez and "
                   "/readyz stay 503; restore the model files or redeploy.")
            logger.error(msg)
            print(msg, file=sys.stderr, flush=True)
            state["refused"] = str(e)
            return
        proc.terminate = lambda: None  # BentoML's proxy stops the process it started at shutdown: it is gone
        proc = await anyio.open_process(instance.__command__(), stdout=None, stderr=None)
        state["proc"] = proc
        state["backend_restarts"] = state.get("backend_restarts", 0) + 1


@bentoml.asgi_app(gateway.app, path="/v1", name="openai")
@bentoml.service(
    name=args.service_name,
    workers=args.workers,  # gateway processes; only the first starts the backend
    traffic=args.traffic(),
    resources=args.resources(),
    labels=args.service_labels(),
    http={"proxy_port": args.backend_port},
    endpoints={"livez": backend.readiness_path},  # the backend path BentoML's proxy polls at start
    image=_image(),
    **({"tracing": args.tracing()} if args.tracing() else {}),
)
class PackagerLLM:
    model = model_ref  # resolved on an instance: the stored model (its files are under model/)

    @bentoml.on_deployment
    def verify_model() -> None:
        """Runs once in `bentoml serve` before workers start: refuse missing API keys and altered model files."""
        from packager.errors import IntegrityError

        _api_keys()
        if args.require_approved:
            _check_approved()
        try:
            _verify_model_files()
        except IntegrityError as e:
            msg = f"packager: refusing to serve {args.model_tag}: {e}"
            logger.error(msg)
            print(msg, file=sys.stderr, flush=True)
            raise SystemExit(IntegrityError.exit_code) from None
        logger.info("packager: model %s verified (digest %s)", args.model_tag, args.model_digest)

    def __command__(self) -> list[str]:
        import os

        from packager.serve.supervise import supervised_command

        model_dir = Path(self.model.path) / MODEL_SUBDIR
        # The supervisor lets in-flight requests drain on SIGTERM and reports an unexpected backend exit
        # (packager/serve/supervise.py); it waits for the worker at most the request timeout and a margin.
        return supervised_command(launch_command(backend, model_dir, args, os.environ),
                                  drain_timeout_s=args.timeout_s + DRAIN_MARGIN_S)

    @bentoml.on_startup
    async def watch_backend(self) -> None:
        """Start the watchdog: a backend that exits on its own is started again."""
        import asyncio

        PackagerLLM.context.state["watchdog"] = asyncio.get_running_loop().create_task(_backend_watchdog(self))

    @bentoml.on_shutdown
    async def stop_restarted_backend(self) -> None:
        """BentoML's proxy stops the backend it started; one the watchdog started again is stopped here."""
        import asyncio
        import signal

        state = PackagerLLM.context.state
        state["stopping"] = True
        if (task := state.get("watchdog")) is not None:
            task.cancel()
        if state.get("backend_restarts") and (proc := state.get("proc")) is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # the supervisor passes it on (it comes from the worker)
            try:
                await asyncio.wait_for(proc.wait(), 30.0)
            except asyncio.TimeoutError:
                proc.kill()

    async def __metrics__(self, content: str) -> str:
        if backend.metrics_path is None:
            return content
        try:
            status, text = await gateway.get(backend.metrics_path)
        except Exception as e:  # the backend may be starting or gone; BentoML's own series still answer
            status, text = 0, repr(e)
        if status != 200:
            logger.warning("packager: backend metrics unavailable (%s): %s", status, text[:200])
            return content
        return content.rstrip("\n") + "\n" + text

    async def __is_ready__(self) -> bool:
        try:
            return (await gateway.get(backend.readiness_path, timeout_s=3.0))[0] == 200
        except Exception:
            return False

    def __is_alive__(self) -> bool:
        proc = PackagerLLM.context.state.get("proc")  # the backend, started by BentoML's proxy
        return proc is None or proc.returncode is None
