"""The errors every sandbox API raises (one place, so callers catch one type)."""


class SandboxError(RuntimeError):
    """A request the sandbox could not answer (timeout, crash, OOM, engine gone, protocol error)."""


class SandboxTimeout(SandboxError):
    pass
