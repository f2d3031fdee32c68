"""`swe`: a repository in an episode-owned hardened container, tools to work on it, and the SWE
harness's verdict on what the model submits.

Task rows are SWE-bench-style instances, the ones the `swe` reward and `python -m sandboxes.swe`
take (`instance_id`, `problem_statement`, `FAIL_TO_PASS`, `PASS_TO_PASS`, `test_patch`, and the
repository as `workdir_archive` or `image`), with `data_source` routed to the `swe` reward.

Each episode starts its own container (sandboxes.pool.Sandbox: no network, all capabilities
dropped, read-only root, memory / pids / tmpfs limits, model code as an unprivileged user), with
the repository at base state in a tmpfs /testbed; `close()` removes it. Containers are never
reused. Tools (JSON calls, environments.tool_calls; the short form runs a shell command):

    run(command)                  sh -c in /testbed; wall clock `run_timeout_s`, output cut at
                                  `max_output_chars`; every process it started is killed when
                                  it returns (a timed-out or flooding command at its limit)
    read_file(path)               the file's text (cut at max_output_chars)
    write_file(path, content)     create or replace a file
    apply_patch(patch)            git apply a unified diff
    submit()                      end the episode; the submission is `git diff` against base

A turn without a tool call submits too. The score comes from the `swe` reward: the harness
re-applies the submitted diff in a fresh container with its anti-hack rules (test and conftest
edits discarded, skips fail, symlinks and paths outside the repo rejected).
"""

from __future__ import annotations

from environments.registry import ToolEnvironment, ToolError, environment

TESTBED = "/testbed"
TOOL_SETUP_S = 60.0  # copying the repository in


@environment("swe")
class SWEEnvironment(ToolEnvironment):
    default_tool, default_argument = "run", "command"

    def __init__(self, run_timeout_s: float = 30.0, max_output_chars: int = 4000,
                 memory_mb: int = 1024, cpus: float = 1.0, pids_limit: int = 128,
                 repo_mb: int = 256, instances_dir: str | None = None, image: str | None = None):
        self.run_timeout_s, self.max_output_chars = run_timeout_s, max_output_chars
        self.limits = {"memory_mb": memory_mb, "cpus": cpus, "pids_limit": pids_limit}
        self.repo_mb, self.instances_dir, self.image = repo_mb, instances_dir, image
        self.sb = None
        self.done = False
        self.patch = ""

    def reset(self, task: dict) -> str:
        from sandboxes import swe as harness
        from sandboxes.engine import connect
        from sandboxes.hardening import SANDBOX_UID, tmpfs_opts
        from sandboxes.image import DEFAULT_IMAGE
        from sandboxes.pool import Sandbox

        client = connect()
        data, strip = harness._repo_tar(task, self.instances_dir, client)
        self.sb = Sandbox(client, image=self.image or task.get("image") or DEFAULT_IMAGE,
                          work_mb=16, kind="swe-env", **self.limits,
                          extra_tmpfs={TESTBED: tmpfs_opts(self.repo_mb, 100_000, uid=SANDBOX_UID,
                                                           mode="0755") + ",exec"})
        z = "z" if data[:2] == b"\x1f\x8b" else ""
        res = self.sb.exec(["sh", "-c", f"tar -x{z}f - --strip-components={strip} -C {TESTBED} "
                            "--no-same-permissions --no-same-owner && " + harness._INIT],
                           stdin=data, timeout_s=TOOL_SETUP_S, output_limit=1 << 16,
                           workdir=TESTBED, env=harness.GIT_ENV)
        if res.exit_code != 0:
            raise RuntimeError(f"could not unpack the repository: {res.stderr[-300:]!r}")
        return (f"Repository at {TESTBED}. Issue:\n{task.get('problem_statement', '')}\n"
                "Tools: run, read_file, write_file, apply_patch, submit.\n")

    def tools(self):
        return {"run": self.run, "read_file": self.read_file, "write_file": self.write_file,
                "apply_patch": self.apply_patch, "submit": self.submit}

    def answer(self, text: str) -> tuple[str, bool]:
        self.submit()
        return "", True

    def _exec(self, argv: list[str], stdin: bytes = b"", timeout_s: float | None = None):
        from sandboxes.swe import GIT_ENV

        if self.sb is None:
            raise ToolError("the episode's container is gone")
        return self.sb.exec(argv, stdin=stdin, timeout_s=timeout_s or self.run_timeout_s,
                            output_limit=self.max_output_chars, workdir=TESTBED,
                            env={**GIT_ENV, "PYTHONDONTWRITEBYTECODE": "1"})

    def _text(self, b: bytes) -> str:
        return b.decode(errors="replace")[:self.max_output_chars]

    def run(self, command: str) -> str:
        res = self._exec(["sh", "-c", str(command)])
        if not (res.timed_out or res.truncated):  # (those were killed already)
            self.sb.kill_all()  # what it left running (a fork bomb's children) goes with it
        out = self._text(res.stdout + res.stderr)
        if res.timed_out:
            return f"{out}\n[timed out after {self.run_timeout_s:g} s; its processes were killed]"
        if res.truncated:
            return f"{out}\n[output over {self.max_output_chars} characters; the command was killed]"
        return f"[exit {res.exit_code}]\n{out}"

    def read_file(self, path: str) -> str:
        res = self._exec(["cat", "--", str(path)])
        if res.exit_code != 0 and not res.truncated:
            raise ToolError(self._text(res.stderr).strip() or f"cannot read {path}")
        return self._text(res.stdout)

    def write_file(self, path: str, content: str) -> str:
        res = self._exec(["sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"', "sh", str(path)],
                         stdin=str(content).encode())
        if res.exit_code != 0:
            raise ToolError(self._text(res.stderr).strip() or f"cannot write {path}")
        return f"wrote {len(str(content))} characters to {path}"

    def apply_patch(self, patch: str) -> str:
        text = str(patch) if str(patch).endswith("\n") else f"{patch}\n"
        res = self._exec(["git", "apply", "--verbose", "-"], stdin=text.encode())
        if res.exit_code != 0:
            raise ToolError("patch did not apply: " + self._text(res.stderr).strip()[-1000:])
        return self._text(res.stderr).strip() or "applied"

    def submit(self) -> str:
        """The diff against base (new files included) is the submission; the episode ends."""
        self.done = True
        if self.sb is None:
            return "submitted nothing: the container is gone"
        from sandboxes.swe import GIT_ENV

        res = self.sb.exec(["sh", "-c", "git add -A >/dev/null 2>&1; git diff --cached --binary HEAD"],
                           timeout_s=30, output_limit=4 << 20, workdir=TESTBED, env=GIT_ENV)
        self.patch = res.stdout.decode(errors="replace") if res.exit_code == 0 else ""
        return f"submitted a diff of {len(self.patch)} characters"

    def reward_inputs(self) -> dict:
        # the swe reward finds the diff in the completion (rewards.extract.unified_diff)
        return {"completion": self.patch}

    def close(self) -> None:
        sb, self.sb = self.sb, None
        if sb is not None:
            sb.destroy()
