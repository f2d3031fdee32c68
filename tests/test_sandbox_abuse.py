"""Hostile programs against the warm pool: each must be contained, leave the host untouched, leave
nothing behind for the next run, and leak no container.

After every case the `contained` fixture checks, from outside: the host canary file is intact,
each pool container runs only its keeper (tini + sleep, as `nobody`), and this process owns no
sandbox containers beyond the pool's. No test sends traffic anywhere but loopback.
"""

from __future__ import annotations

import hashlib
import textwrap

import pytest
from sandbox_fixtures import require_docker

pytestmark = pytest.mark.docker

MEM = 256  # MB per container: small, so the memory bomb is quick


@pytest.fixture(scope="module", params=["supervisor", "exec"])
def pool(request):
    """Every case runs against both pool modes (PID-1 supervisor, and plain `docker exec`)."""
    require_docker()
    from sandboxes import run

    run.shutdown()
    p = run.pool_for(run.DEFAULT_IMAGE, MEM, size=2, mode=request.param)
    yield p
    run.shutdown()
    from sandboxes.engine import connect
    from sandboxes.hardening import own_containers

    assert own_containers(connect()) == [], "containers leaked after the pool closed"


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    path = tmp_path_factory.mktemp("host") / "canary.txt"
    path.write_text("the host's own file\n")
    return path


@pytest.fixture(autouse=True)
def contained(pool, canary):
    before = hashlib.sha256(canary.read_bytes()).hexdigest()
    yield
    pool.wait_idle()
    assert hashlib.sha256(canary.read_bytes()).hexdigest() == before, "host file changed"
    from sandboxes.hardening import own_containers

    ours = {c.id for c in own_containers(pool.client)}
    assert ours == {c.id for c in pool.containers()}, "a container leaked"
    assert len(ours) == pool.size
    for c in pool.containers():
        procs = c.top(ps_args="-eo pid,user,comm")["Processes"]
        # Only the keeper is left: the supervisor (root, in the container only), or tini and
        # sleep as nobody. top reports host user names (or numbers).
        if pool.mode == "supervisor":
            assert len(procs) == 1 and procs[0][1] in ("root", "0"), procs
        else:
            assert len(procs) == 2 and all(p[1] in ("nobody", "65534") for p in procs), procs


def run(src: str, **kw):
    from sandboxes.run import run_code

    kw.setdefault("timeout_s", 5)
    return run_code(textwrap.dedent(src), memory_mb=MEM, **kw)


# Lists the sandbox user's processes other than the lister: the next run must see none.
OTHERS = """
import os
me = os.getpid()
print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != me
             and os.stat('/proc/' + p).st_uid == os.getuid()))
"""


def assert_clean_next_run():
    r = run(OTHERS)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r


def test_fork_bomb():
    r = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout_s=3)
    assert r.timed_out and r.returncode is None
    assert_clean_next_run()


def test_thread_bomb():
    r = run("""
        import threading, time
        n = 0
        try:
            while True:
                threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
                n += 1
        except RuntimeError as e:
            print("stopped at", n, e)
            raise SystemExit(3)
    """)
    assert r.returncode == 3 and "can't start new thread" in r.stdout
    assert int(r.stdout.split()[2]) < 128  # the pids limit, not memory, stopped it
    assert_clean_next_run()


def test_memory_bomb_is_oom_killed():
    r = run("""
        chunks = []
        while True:
            chunks.append(b"x" * (16 << 20))  # touched, so it is really resident
    """, timeout_s=20)
    assert r.oom_killed and r.returncode == 137 and not r.timed_out
    assert_clean_next_run()


def test_cpu_spin_is_killed_at_the_wall_clock():
    r = run("while True:\n    pass\n", timeout_s=1.5)
    assert r.timed_out and 1.5 <= r.duration_s < 8
    assert_clean_next_run()


def test_sleep_forever():
    r = run("import time\ntime.sleep(10**6)\n", timeout_s=1)
    assert r.timed_out and r.returncode is None


def test_output_flood_is_capped():
    from sandboxes.run import OUTPUT_LIMIT

    r = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout_s=20)
    assert r.output_truncated and not r.timed_out and r.returncode is None
    assert len(r.stdout) == OUTPUT_LIMIT


def test_disk_fill_stops_at_the_tmpfs_size():
    r = run("""
        import errno
        n = 0
        try:
            with open('/work/fill', 'wb') as f:
                while True:
                    f.write(b'\\0' * (1 << 20)); f.flush(); n += 1
        except OSError as e:
            print(n, errno.errorcode[e.errno])
    """, timeout_s=20)
    mb, err = r.stdout.split()
    assert err in ("ENOSPC", "EFBIG") and int(mb) <= 64, r


def test_inode_exhaustion_stops_at_the_inode_limit():
    r = run("""
        import errno, os
        n = 0
        try:
            while True:
                open(f'/work/{n}', 'w').close(); n += 1
        except OSError as e:
            print(n, errno.errorcode[e.errno])
    """, timeout_s=20)
    n, err = r.stdout.split()
    assert err == "ENOSPC" and int(n) <= 8192, r
    assert_clean_next_run()


def test_network_only_loopback_and_no_name_resolution():
    r = run("""
        import os, socket
        print(sorted(os.listdir('/sys/class/net')))
        routes = open('/proc/net/route').read().splitlines()[1:]
        print(len(routes))
        try:
            socket.getaddrinfo('example.com', 80)  # the resolver is 127.0.0.1: loopback only
            print('resolved')
        except socket.gaierror:
            print('no-dns')
    """)
    assert r.stdout.split("\n")[:3] == ["['lo']", "0", "no-dns"], r


def test_host_files_are_not_visible(canary):
    r = run(f"""
        import os
        for p in [{str(canary)!r}, '/var/run/docker.sock', '/root/.bash_history']:
            print(os.path.exists(p))
        try:
            open('/etc/shadow').read()
        except PermissionError:
            print('denied')
        try:
            os.listdir('/proc/1/root')
        except PermissionError:
            print('denied')
    """)
    assert r.stdout.split() == ["False", "False", "False", "denied", "denied"], r


def test_nothing_persists_between_runs():
    r = run("""
        import os
        for d in ('/work', '/tmp', '/dev/shm'):
            open(d + '/left-behind', 'w').write('x')
        os.mkdir('/work/d'); os.chmod('/work/d', 0)  # hard to delete
        os.environ['LEAK'] = '1'
    """)
    assert r.returncode == 0, r
    r = run("""
        import os
        print(sorted(os.listdir('/work') + os.listdir('/tmp') + os.listdir('/dev/shm')),
              os.environ.get('LEAK'))
    """)
    assert r.stdout.strip() == "['main.py'] None", r  # only this run's own program


def test_ignoring_sigterm_does_not_help():
    r = run("""
        import signal, time
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        time.sleep(60)
    """, timeout_s=1)
    assert r.timed_out
    assert_clean_next_run()


def test_setsid_daemon_does_not_outlive_the_run():
    r = run("""
        import os, subprocess
        subprocess.Popen(['setsid', 'sleep', '1000'], start_new_session=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                import time; time.sleep(1000)
            os._exit(0)
        print('parent done')
    """)
    assert r.returncode == 0 and "parent done" in r.stdout
    assert_clean_next_run()


def test_kill_minus_one_cannot_reach_pid_1(pool):
    replaced = pool.stats["replacements"]
    r = run("""
        import os, signal
        try:
            os.kill(-1, signal.SIGKILL)  # every process this user may signal
        except ProcessLookupError:
            pass  # there is none: the keeper is another user
        try:
            os.kill(1, signal.SIGKILL)
        except PermissionError:
            print('pid 1 protected')
    """)
    assert "pid 1 protected" in r.stdout, r
    pool.wait_idle()
    assert pool.stats["replacements"] == replaced  # the container survived; reset was enough
    assert_clean_next_run()


def test_setuid_and_capabilities():
    r = run("""
        import os, subprocess
        try:
            os.setuid(0)
        except PermissionError:
            print('setuid denied')
        st = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines()
                  if ':\\t' in l)
        print(st['CapEff'].strip(), st['CapPrm'].strip(), st['CapInh'].strip(),
              st['NoNewPrivs'].strip())
        su = subprocess.run(['su', '-c', 'id -u', 'root'], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
        print('su', su.returncode != 0, su.stdout.strip() != '0')
        print(os.getuid(), os.geteuid())
    """)
    lines = r.stdout.splitlines()
    assert lines[0] == "setuid denied"
    assert lines[1] == "0000000000000000 0000000000000000 0000000000000000 1"
    assert lines[2] == "su True True" and lines[3] == "10001 10001", r


def test_mount_and_namespaces_are_denied():
    r = run("""
        mount -t tmpfs none /tmp 2>/dev/null && echo mounted || echo mount-denied
        unshare -r true 2>/dev/null && echo userns || echo unshare-denied
        echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq || echo sysrq-denied
    """, language="bash")
    assert r.stdout.split() == ["mount-denied", "unshare-denied", "sysrq-denied"], r


def test_root_filesystem_is_read_only():
    r = run("""
        import errno
        for p in ('/usr/lib/python3/dist-packages/evil.py', '/etc/passwd', '/evil'):
            try:
                open(p, 'a').write('x')
                print('wrote', p)
            except OSError as e:
                print(errno.errorcode[e.errno])
    """)
    assert set(r.stdout.split()) <= {"EROFS", "EACCES"}, r


def test_file_descriptor_limit():
    r = run("""
        fs = []
        try:
            while True:
                fs.append(open('/dev/null'))
        except OSError as e:
            print(len(fs), e.errno)
    """)
    n, errno_ = r.stdout.split()
    assert int(n) < 256 and errno_ == "24", r  # EMFILE


def test_unread_huge_stdin_does_not_deadlock():
    r = run("print('ignored my input')\n", stdin="x" * (8 << 20))
    assert r.returncode == 0 and r.stdout == "ignored my input\n"


def test_orphans_are_reaped_not_accumulated():
    # 60 orphans per run, three runs: without a reaping PID 1 the zombies would pile up
    # against the pids limit (128) and the third run could not start its children.
    src = """
        import os
        for _ in range(60):
            if os.fork() == 0:
                if os.fork() == 0:
                    os._exit(0)
                os._exit(0)
            os.wait()
        print('ok')
    """
    for _ in range(3):
        assert run(src).stdout == "ok\n"


def test_library_calling_os_exit_at_import():
    r = run("""
        import os, sys
        os.makedirs('/work/lib', exist_ok=True)
        open('/work/lib/evil.py', 'w').write('import os\\nos._exit(0)\\n')
        sys.path.insert(0, '/work/lib')
        import evil
        print('never printed')
    """)
    assert r.returncode == 0 and r.stdout == ""  # it exits "successfully" with no output
    # ...which the test-case runner scores as a wrong answer, not a pass:
    from sandboxes.testcases import verdict

    assert verdict(r, "42\n", "exact").status == "wrong_answer"


def test_pool_stays_usable_after_all_of_the_above(pool):
    r = run("print(sum(range(10)))\n")
    assert r.returncode == 0 and r.stdout == "45\n" and not r.timed_out
    assert pool.stats["replace_failures"] == 0
