"""Ray for the length of one piece of work (a search, a hyper-parameter sweep): join a cluster
or start a private local instance, and leave nothing behind.

Shared by `nas evolve` (evolution.pools) and `nas retrain --sweep` (picodet_nas.engine.sweep);
it lives here because dependencies point evolution -> supernet -> picodet_nas.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile

from ..errors import UserError


def ray_address(address: str | None) -> str | None:
    """The cluster to join: `--address`, else the RAY_ADDRESS environment variable, else None
    (a local instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


class RaySession:
    """Ray for the duration of a search or a sweep.

    * Ray already initialised in this process (a notebook, a test): used as it is, left running.
    * `address` (`--address`, else the RAY_ADDRESS environment variable): join that cluster.
      Clusters with token authentication (the default from Ray 2.59 on) need RAY_AUTH_TOKEN
      or the token file on this machine.
    * Otherwise a local instance for this search alone: `num_cpus` CPUs, no dashboard, its
      session files in a temporary folder under /tmp (Ray's unix socket paths must stay short,
      which a run directory may not be) that is removed at the end; Ray never cleans the
      `/tmp/ray/session_*` folders it would otherwise leave behind.

    `RaySession` is also importable from `evolution.pools`, where it was first written.
    """

    def __init__(self, address: str | None, num_cpus: int, log: logging.Logger):
        """`num_cpus`: CPUs of a local instance (ignored when joining a cluster)."""
        import ray

        self.ray = ray
        self.owned = False
        self.temp_dir: str | None = None
        if ray.is_initialized():
            log.info("using the Ray instance already running in this process")
            return
        common = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
        if address:
            check_reachable(address)
            try:
                ray.init(address=address, **common)
            except (ConnectionError, ValueError, RuntimeError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise UserError(f"cannot join the Ray cluster at {address!r}: {first[:200]}") from None
            log.info("joined the Ray cluster at %s", address)
        else:
            self.temp_dir = tempfile.mkdtemp(prefix="nas-ray-", dir="/tmp")
            ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=self.temp_dir, **common)
            log.info("started a local Ray instance with %d CPUs (session files in %s)", num_cpus, self.temp_dir)
        self.owned = True

    def cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def gpus(self) -> float:
        return float(self.ray.cluster_resources().get("GPU", 0))

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()
            self.owned = False
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def check_reachable(address: str) -> None:
    """A `host:port` nobody listens on: a one-line error now, because `ray.init` would retry
    connecting for many minutes (ignoring SIGTERM) before it gives up."""
    match = re.fullmatch(r"(?:ray://)?\[?([\w.\-:]+?)\]?:(\d+)", address.strip())
    if match is None:
        return  # "auto" and other forms: Ray resolves them and fails fast itself
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise UserError(f"cannot join the Ray cluster at {address!r}: nothing answers there ({e.strerror or e}); "
                        f"start it with `ray start --head` or check --address / RAY_ADDRESS") from None
