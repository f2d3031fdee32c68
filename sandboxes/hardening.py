"""The one place that says how a sandbox container is locked down, and the sweep of leftovers.

`container_kwargs` is a pure function from limits to `docker` SDK arguments, so the flags can be
read (and tested) without an engine. docs/sandboxes.md says why each flag is there.
"""

from __future__ import annotations

import os
import socket

from sandboxes import sizes

LABEL = "cispo.sandbox"  # value: the kind of container (scorer, run, swe)
OWNER_LABEL = "cispo.owner"  # "<hostname>:<pid>" of the process that made it
SANDBOX_UID = 10001  # runs model-written code (made by sandboxes.image)
KEEPER_UID = 65534  # `nobody`: owns the container's PID 1, so sandboxed code cannot signal it
NOFILE = 256  # open files per process
FSIZE_MB = 64  # largest file a process may write (the tmpfs sizes bound the total)


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _ulimit(name: str, value: int):
    import docker.types

    return docker.types.Ulimit(name=name, soft=value, hard=value)


def container_kwargs(*, kind: str, memory_mb: int | str, cpus: float, pids_limit: int,
                     tmpfs: dict[str, str], user: str, read_only: bool = True,
                     init: bool = False) -> dict:
    """Arguments for `client.containers.create/run` that every sandbox container gets
    (`memory_mb`: MB, or Docker's size syntax, `sandboxes.sizes`).

    memory = memory+swap (no swap to hide in); all capabilities dropped and no-new-privileges
    (setuid binaries gain nothing); no network at all; read-only root so the only writable
    places are the size- and inode-limited tmpfs mounts given here.
    """
    memory_mb = sizes.memory_mb(memory_mb, "memory_mb")
    if memory_mb < 16:
        raise ValueError(f"memory_mb={memory_mb}: a sandbox needs at least 16 MB")
    return dict(
        network_mode="none",
        # No resolver but loopback: even the host's DNS server address stays out of the box,
        # and a lookup fails on the spot instead of being attempted anywhere.
        dns=["127.0.0.1"],
        mem_limit=f"{memory_mb}m", memswap_limit=f"{memory_mb}m",
        pids_limit=pids_limit, nano_cpus=int(cpus * 1e9),
        cap_drop=["ALL"], security_opt=["no-new-privileges"],
        user=user, read_only=read_only, tmpfs=tmpfs, shm_size="8m",
        ulimits=[_ulimit("nofile", NOFILE), _ulimit("fsize", FSIZE_MB << 20),
                 _ulimit("core", 0)],
        environment={"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"},
        labels={LABEL: kind, OWNER_LABEL: owner()},
        init=init, detach=True,
    )


def tmpfs_opts(size_mb: int, inodes: int, uid: int | None = None, mode: str = "1777") -> str:
    """A tmpfs mount bounded in bytes AND inodes (a million empty files is a fill attack too)."""
    opts = f"size={size_mb}m,nr_inodes={inodes},mode={mode}"
    return opts + (f",uid={uid},gid={uid}" if uid is not None else "")


def sweep_orphans(client=None) -> int:
    """Remove sandbox containers left on this host by processes that no longer exist.

    Containers are matched by label and owner, so a run never touches another live run's
    containers (several runs and engineers may share one engine).
    """
    if client is None:
        from sandboxes.engine import connect

        client = connect()
    host = socket.gethostname()
    removed = 0
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        h, _, pid = c.labels.get(OWNER_LABEL, "").rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            try:
                c.remove(force=True)
                removed += 1
            except Exception:  # removed concurrently by another sweeper: already gone
                pass
    return removed


def own_containers(client) -> list:
    """Sandbox containers that belong to this process (tests check none are left)."""
    return client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner()}"})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
