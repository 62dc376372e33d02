"""Ray: each run is a Ray task, on `[executor] ray_address` or on a cluster started here (loopback only).

The worker needs nothing shared with the driver but the project directory at the same path (a local
cluster, or a shared file system): it materialises the candidate in a temp dir (executors/transfer.py),
runs `execute()` there exactly as a local slot does, and sends the outcome and the run directory's
files back by value; the driver writes them into the job's run dir.

Ray never retries (`max_retries=0`): a run whose worker or node died comes back `lost`, and the loop
decides whether to run it again. The training process dies with its worker: both backends set
PR_SET_PDEATHSIG (bwrap through --die-with-parent), which fires when the forking thread ends; that is
the task's thread (the worker's main thread, measured), and it waits for the run, so only the worker's
death ends it early. Measured: a worker killed with SIGKILL or by `ray.cancel(force=True)` takes its
run with it, under both backends.

A cluster started here (each point measured with Ray 2.60):
- binds every server to 127.0.0.1: Ray rewrites `--node-ip-address=127.0.0.1` to the routable address
  (and then listens on all interfaces) unless it thinks it runs a single-machine cluster, which the
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 switch makes it do on Linux too (the same for a loopback
  ray_address, which Ray would otherwise rewrite and then fail to reach);
- uses token auth with a fresh random token in a 0600 file under its own temp dir (RAY_AUTH_TOKEN_PATH):
  a plain `ray.init()` would write ~/.ray/auth_token, and a later `ray start` elsewhere would pick it up;
- has no dashboard, no usage stats, and keeps worker logs out of nightlab's output;
- declares the GPUs `[sandbox] gpus` offers (nvidia-smi for "all") with their real indices, so Ray
  hands each task its own `gpus_per_trial` of them;
- leaves no process behind: Ray's agents can outlive a clean shutdown, and a nightlab killed with -9
  (the next cluster started here sweeps those).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nightlab.agents import require
from nightlab.config import Config
from nightlab.errors import UsageError
from nightlab.executors import Job, check_gpus, execute, gpu_ids
from nightlab.executors.transfer import alive, collect, job_dir, on_worker, short_tmp, write_back
from nightlab.sandbox import load_sandbox
from nightlab.types import RunOutcome, Status

MB = 1 << 20
CLUSTER_ENV = ("RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def import_ray(local: bool) -> Any:
    """ray, set up for a cluster on this machine's loopback (`local`) or elsewhere."""
    if local:  # read when ray is imported: set first (and refreshed below for a ray imported earlier)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = require("ray", "ray")
    if local:
        _refresh(ray)
    return ray


def loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_reachable(address: str) -> None:
    """A wrong ray_address is one clear line, not ray.init() retrying for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return  # "auto", ray://…: Ray's own resolution
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise UsageError(f"[executor] ray_address {address!r}: cannot reach a Ray cluster there ({e})") from None


class RayExecutor:
    name = "ray"

    def __init__(self, cfg: Config, sandbox: str, slots: int) -> None:
        address = cfg.executor.ray_address
        # Ray rewrites a loopback address to this machine's routable one unless told it is a local cluster.
        self.ray = import_ray(local=not address or loopback(address))
        self.cfg, self.slots, self.per = cfg, slots, cfg.executor.gpus_per_trial
        self.sandbox = load_sandbox(sandbox).name  # "auto" resolved and probed here, once
        self.cluster: LocalCluster | None = None
        self.connected = False
        if self.ray.is_initialized():
            pass  # the caller's own connection: used, never shut down
        elif address:
            check_reachable(address)
            self.ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            self.connected = True
        else:
            check_gpus(cfg, slots, "--slots")
            self.cluster = LocalCluster(self.ray, max(os.cpu_count() or 1, slots), gpu_ids(cfg.sandbox.gpus))
        self.remote = self.ray.remote(run_job)
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="nightlab-ray")
        self.refs: dict[str, object] = {}  # job id → ObjectRef of its task, while it runs
        self.lock = threading.Lock()
        try:
            have = self.ray.cluster_resources().get("GPU", 0)
            if self.per > have:
                raise UsageError(f"gpus_per_trial {self.per}: the Ray cluster has {have:g} GPUs")
            self._warm()
        except BaseException:
            self.shutdown()
            raise

    def _warm(self) -> None:
        """A worker per slot, started now: each takes 1-2 s (Python, ray, nightlab), not for the first trials to pay."""
        refs = [self.ray.remote(warm_worker).options(num_cpus=1, max_retries=0).remote(self.sandbox)
                for _ in range(self.slots)]
        try:
            self.ray.get(refs, timeout=120)
        except self.ray.exceptions.RayTaskError as e:  # e.g. the sandbox does not work on a worker node
            raise e.as_instanceof_cause() from None
        except self.ray.exceptions.GetTimeoutError:
            pass  # a busy cluster: the first trials wait for workers instead

    def submit(self, job: Job) -> Future[RunOutcome]:
        ref = self.remote.options(num_cpus=1, num_gpus=self.per, max_retries=0, retry_exceptions=False).remote(
            self.cfg, self.sandbox, job, self.per > 0)
        with self.lock:
            self.refs[job.id] = ref
        return self.pool.submit(self._result, job, ref)

    def _result(self, job: Job, ref: object) -> RunOutcome:
        exceptions = self.ray.exceptions
        try:
            outcome, files = self.ray.get(ref)
        except exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None  # a bug in nightlab's worker side: raised as it is locally
        except exceptions.RayError as e:
            return RunOutcome(job=job.id, slot=job.slot, status=Status.LOST, reason=lost_reason(e))
        finally:
            with self.lock:
                self.refs.pop(job.id, None)
        write_back(job.spec.run_dir, files)
        return outcome

    def cancel(self, job_id: str) -> None:
        with self.lock:
            ref = self.refs.get(job_id)
        if ref is not None:
            self.ray.cancel(ref, force=True)  # kills the worker; PDEATHSIG takes the run down with it

    def shutdown(self) -> None:
        for job_id in list(self.refs):
            self.cancel(job_id)
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        elif self.connected:
            self.ray.shutdown()  # only disconnects: the cluster is not ours
            self.connected = False


def lost_reason(e: Exception) -> str:
    ex = type(e).__name__
    if ex == "TaskCancelledError":
        return "cancelled"
    if ex == "WorkerCrashedError":
        return "its Ray worker died (killed, or out of memory)"
    if ex in ("NodeDiedError", "LocalRayletDiedError"):
        return "its Ray node died"
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"lost in Ray: {ex}" + (f": {first}" if first else "")


class LocalCluster:
    """A Ray cluster started in this process: loopback only, token auth, its own temp dir; `stop()` undoes it all."""

    def __init__(self, ray: Any, num_cpus: int, gpus: list[str]) -> None:
        self.ray = ray
        self.saved = {k: os.environ.get(k) for k in (*CLUSTER_ENV, "CUDA_VISIBLE_DEVICES")}
        sweep_clusters(short_tmp())
        self.dir = Path(tempfile.mkdtemp(prefix=f"nightlab-ray-{os.getpid()}-", dir=short_tmp()))
        token = self.dir / "auth_token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                          RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        if gpus:  # Ray hands out the ids it finds here (our real indices), not 0..n-1
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        _refresh(ray)
        try:
            ctx = ray.init(num_cpus=num_cpus, num_gpus=len(gpus), include_dashboard=False, log_to_driver=False,
                           logging_level=logging.WARNING, object_store_memory=256 * MB, _temp_dir=str(self.dir),
                           _node_ip_address="127.0.0.1")
        except BaseException:
            self.stop()
            raise
        finally:
            _restore(self.saved, ("CUDA_VISIBLE_DEVICES",))
        self.address = ctx.address_info["gcs_address"]

    def stop(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()  # stops the processes ray.init started, and only those
        kill_holders(self.dir)  # but not always all of them
        _restore(self.saved, CLUSTER_ENV)
        _refresh(self.ray)
        shutil.rmtree(self.dir, ignore_errors=True)


def sweep_clusters(tmp: str) -> None:
    """Remove what a nightlab killed with -9 left of its cluster (its pid names the dir): processes, temp dir."""
    for d in Path(tmp).glob("nightlab-ray-*-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not alive(int(pid)) and not d.is_symlink() and d.lstat().st_uid == os.getuid():
            kill_holders(d)
            shutil.rmtree(d, ignore_errors=True)


def kill_holders(d: Path) -> None:
    """SIGKILL the processes of the cluster whose private temp dir is `d`: they hold their log files there.

    Ray's DashboardAgent and RuntimeEnvAgent can outlive their raylet, after the driver's death and even
    after a clean ray.shutdown() (measured with Ray 2.60). Their environment cannot identify them
    (setproctitle writes over it). A driver (this process, or a client connected to the cluster) also
    holds files there, its python-core-driver log: it is not the cluster's, and is spared.
    """
    prefix = f"{d}/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            held = [t for t in (os.readlink(fd) for fd in (proc / "fd").iterdir()) if t.startswith(prefix)]
            if held and not any("/logs/python-core-driver-" in t for t in held):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            pass  # gone meanwhile, or another user's


def _restore(saved: dict[str, str | None], names: tuple[str, ...]) -> None:
    for name in names:
        if (value := saved[name]) is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _refresh(ray: Any) -> None:
    """Make an already-imported ray see the environment as it is now (best effort: private names)."""
    try:
        from ray._private import ray_constants
        from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]  # private, not in the stubs
        from ray._raylet import Config as RayConfig  # type: ignore[attr-defined]

        ray_constants.ENABLE_RAY_CLUSTER = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1") != "0"
        RayConfig.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


# -- the worker side ----------------------------------------------------------------------------------
def warm_worker(sandbox: str) -> int:
    import nightlab.measure  # noqa: F401  (what every run needs, imported before the first one)

    load_sandbox(sandbox)
    time.sleep(0.5)  # held a moment, so each warm-up task gets a worker of its own
    return os.getpid()


def run_job(cfg: Config, sandbox: str, job: Job, ray_gpus: bool) -> tuple[RunOutcome, dict[str, bytes]]:
    """One job in a Ray worker: a fresh copy of the candidate, `execute()`, the run directory by value."""
    base = job_dir()
    try:
        job = on_worker(cfg, job, base)
        if ray_gpus:  # the GPUs Ray reserved for this task (it set CUDA_VISIBLE_DEVICES to the same)
            import ray

            job.spec.gpus = ",".join(sorted(ray.get_runtime_context().get_accelerator_ids()["GPU"], key=_index))
        outcome = execute(cfg, load_sandbox(sandbox), job)
        return outcome, collect(job.spec.run_dir)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _index(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)
