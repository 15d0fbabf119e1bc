"""The packager bento: ONE service template, parameterised by its arguments (packager/serve/args.py).

    packager build VARIANT_DIR            # imports the model, runs `bentoml build`, prints the bento tag
    bentoml serve TAG                     # or: packager serve TAG

Layout of a running replica:

    client ──HTTP──> BentoML server (this service, port 3000 by default)
                       /v1/*         gateway (packager.serve.gateway): relays to the backend with httpx and
                                     observes TTFT, TPOT, E2E, tokens and outcomes -> packager_* series
                       /readyz       200 once the backend answers its readiness path
                       /livez        200 while the backend process lives
                       /metrics      BentoML's series + packager_* + the backend's (vllm:*) merged
                       (other paths) BentoML's proxy straight to the backend
                     `__command__`: packager.serve.supervise -> the backend, an OpenAI server on
                                     127.0.0.1:<backend_port>, e.g. vLLM. The supervisor lets in-flight
                                     requests drain on SIGTERM; a backend that dies on its own is started
                                     again by the worker (watchdog below; /livez 200, /readyz 503 meanwhile).

Before any worker starts, `bentoml serve` runs `verify_model` (an on_deployment hook, in the serving
process): the model files' sha256 must match what was recorded at import and the digest this bento was
built for; otherwise it refuses to start, with a message, and exits non-zero.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import bentoml

from packager.serve.args import BentoArgs, deployment_overrides
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
                  metrics_factory=_create_metrics)


def _image() -> bentoml.images.Image:
    # The Python requirements shared by every target are in bentofile.yaml; the backend's are per target.
    return bentoml.images.Image(python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
                                lock_python_packages=False).python_packages(*backend.python_packages(args.target))


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
        """Runs once in `bentoml serve` before workers start: refuse altered model files."""
        from packager.errors import IntegrityError
        from packager.serve.integrity import verify_model_files

        stored = model_ref.resolve()
        try:
            verify_model_files(Path(stored.path) / MODEL_SUBDIR, stored.info.metadata, args.model_digest,
                               f"BentoML model {args.model_tag}")
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
