"""Connect to the Docker engine, or fail with one message that says what to do."""

from __future__ import annotations


class DockerUnavailable(RuntimeError):
    """No Docker engine answers; the message names the fixes, including the non-isolated
    `sandbox.backend=process` fallback, which is never chosen silently."""


HOW_TO_FIX = (
    "No Docker engine answers{where}: {err}\n"
    "  The sandboxes (math verdicts, code, SWE patches) run model output inside Docker.\n"
    "  Fix: start an engine (`make docker`, or `sudo launch/local/setup_docker.sh`, or\n"
    "  `sudo systemctl start docker`), or point DOCKER_HOST at one.\n"
    "  Without Docker you may set `sandbox.backend=process`: verdicts then run in local\n"
    "  subprocesses with time/memory limits but NO isolation (never chosen automatically)."
)


def connect(timeout_s: float = 10.0):
    """A `docker.DockerClient` that has answered a ping."""
    import os

    import docker

    where = f" at DOCKER_HOST={os.environ['DOCKER_HOST']}" if os.environ.get("DOCKER_HOST") else ""
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except Exception as e:  # docker raises several unrelated types here (requests, OSError...)
        raise DockerUnavailable(HOW_TO_FIX.format(where=where, err=f"{type(e).__name__}: {e}")) from e
    return client
