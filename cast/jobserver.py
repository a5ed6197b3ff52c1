"""A fork server for the pipeline's jobs on one machine.

Every job is a fresh `python -m cast.cli STAGE ...` that imports torch, transformers and MLflow
before it does anything: ~7 s of CPU a job on a 2-core machine, most of a small job. When Snakemake
runs the jobs itself (local execution, not a dry run), the Snakefile starts one server
(`python -m cast.jobserver SOCKET SNAKEMAKE_PID`) that imports them once. A job's process then hands the server
its arguments, working directory, environment and stdin/stdout/stderr (SCM_RIGHTS), and the server
forks a child that runs exactly that command (cast.cli.main) with them; the job's process waits for
the child's exit status and returns it. It stays the process Snakemake watches: SIGINT, SIGTERM and
SIGHUP are forwarded to the child, and the child ends itself when the job's process is gone (SIGKILL).
The child exits without the interpreter's teardown (run_and_exit), which would touch, and so copy,
most of the server's memory.

A job runs in its own process, as without a server, whenever the server cannot give it the same
run: CAST_JOB_SERVER unset or empty (remote executors, `cast` typed by hand), the socket not there
or refusing, another interpreter or another copy of the package, or an environment that differs
from the server's in anything but the names in MAY_DIFFER (torchrun's workers, a job with another
thread count, other library settings read at import). CAST_JOB_SERVER=off in Snakemake's
environment turns the server off.
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import pkgutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from importlib import import_module
from pathlib import Path

ENV = "CAST_JOB_SERVER"
# Set by a shell or by Snakemake per job, and read by nothing at import time (tempfile's cached
# directory is reset in the child).
MAY_DIFFER = frozenset({ENV, "_", "PWD", "OLDPWD", "SHLVL", "PS1", "TMP", "TEMP", "TMPDIR", "TEMPDIR"})
# Imported once by the server: what the stages import before their own work (the cast package's
# modules are added by walking it), so that a forked job imports almost nothing.
PRELOAD = ("torch", "transformers", "transformers.models.llama.modeling_llama",
           "transformers.models.auto.tokenization_auto", "tokenizers", "mlflow",
           "mlflow.store.tracking.sqlalchemy_store", "sqlalchemy.dialects.sqlite", "jsonschema", "datasets",
           "gensim.corpora.wikicorpus", "scipy.optimize", "pandas", "lm_eval", "matplotlib")
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")  # what Snakemake sets to a job's threads
_LEN = struct.Struct("!I")
IDLE_S = 600


def _package() -> str:
    return str(Path(__file__).resolve().parent)


# -- the job's side -----------------------------------------------------------------------------
def forward(argv: list[str]) -> int | None:
    """Run `cast argv` in a child of the server; its exit status, or None: run it in this process."""
    path = os.environ.get(ENV, "")
    if not path or path == "off":
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                              "python": sys.executable, "package": _package()}).encode()
        socket.send_fds(sock, [_LEN.pack(len(request)) + request], [0, 1, 2])
        reply = sock.makefile("r")
        first = reply.readline().split()
    except OSError:
        sock.close()
        return None
    if not first or first[0] != "pid":
        sock.close()
        return None
    child = int(first[1])

    def relay(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, relay)
    last = reply.readline().split()  # "exit CODE", or nothing if the server died
    return int(last[1]) if last and last[0] == "exit" else 1


# -- the server's side --------------------------------------------------------------------------
def _refusal(request: dict, env: dict) -> str | None:
    """Why this server cannot run the request as its own process would, or None."""
    if request["python"] != sys.executable:
        return f"another interpreter ({request['python']})"
    if request["package"] != _package():
        return f"another copy of cast ({request['package']})"
    diff = sorted(k for k in set(env) | set(request["env"]) if k not in MAY_DIFFER and env.get(k) != request["env"].get(k))
    return f"environment differs in {', '.join(diff)}" if diff else None


def _stage(request: dict) -> str:
    return request["argv"][0] if request["argv"] else ""


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < _LEN.size or len(data) < _LEN.size + _LEN.unpack_from(data)[0]:
        more = conn.recv(1 << 16)
        if not more:
            raise ConnectionError("request cut short")
        data += more
    return json.loads(data[_LEN.size:_LEN.size + _LEN.unpack_from(data)[0]]), fds


def _run_child(conn: socket.socket, listener: socket.socket, request: dict, fds: list[int], added: dict) -> None:
    """In the forked child: become the job's process, run the command, exit with its status."""
    listener.close()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(s, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**added, **request["env"]})  # as the job's own imports would have left it
    tempfile.tempdir = None
    sys.argv = [sys.argv[0], *request["argv"]]

    def watch():  # the job's process closed its end: it was killed, so the job ends too
        if conn.recv(1) == b"":
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    from .cli import main

    run_and_exit(lambda: main(request["argv"]))


def run_and_exit(run) -> None:
    """Exit as Python would after `sys.exit(run())`, without the interpreter's teardown (freeing
    every object torch, transformers and MLflow made: ~0.5 s in a job's own process, ~2 s in a child
    of this server, where it copies most of the server's memory). Python's exit otherwise: an
    uncaught exception's traceback and status 1, a KeyboardInterrupt's SIGINT, non-daemon threads
    joined, atexit handlers run, stdio flushed."""
    interrupted = False
    try:
        code = run()
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code, interrupted = 1, True
    except BaseException:  # reported as Python reports an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code or 0)


def serve(path: str, parent: int) -> None:
    """Bind `path`, import what the jobs import, then fork one child per request until `parent`
    (Snakemake) is no longer this process's parent, SIGTERM arrives, or it has sat idle (no request,
    no job) for IDLE_S. Never returns in a child."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)  # jobs that connect during the imports wait in the backlog
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and os.path.exists(path) and os.unlink(path))  # not in a child
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the jobs (same process group); they end, Snakemake stops us
    env = dict(os.environ)  # before the imports: some set variables of their own (torch, MLflow)
    from . import cli  # noqa: F401 - installs cast.quiet's filters before torch loads

    for name in (*PRELOAD, *(m.name for m in pkgutil.walk_packages([_package()], "cast."))):
        import_module(name)
    added = {k: v for k, v in os.environ.items() if k not in env}
    gc.freeze()  # what the imports made is never collected: a child's collections skip it (and do not copy it)
    print(f"cast job server: {path} ready (pid {owner})", flush=True)
    children: dict[int, socket.socket] = {}
    listener.settimeout(0.2)
    last = time.monotonic()
    while not stopping and os.getppid() == parent and time.monotonic() - last < IDLE_S:
        _reap(children)
        if children:
            last = time.monotonic()
        try:
            conn, _ = listener.accept()
        except (TimeoutError, InterruptedError):
            continue
        last = time.monotonic()
        conn.settimeout(None)
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError) as e:
            print(f"cast job server: bad request ({e})", flush=True)
            conn.close()
            continue
        why = _refusal(request, env)
        if why:
            print(f"cast job server: `cast {_stage(request)}` runs in its own process: {why}", flush=True)
            conn.sendall(b"refused\n")
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(conn, listener, request, fds, added)
        for fd in fds:
            os.close(fd)
        children[pid] = conn
        conn.sendall(f"pid {pid}\n".encode())
        print(f"cast job server: pid {pid} runs `cast {_stage(request)}`", flush=True)
    listener.close()  # no new jobs; those running are still reported to their processes
    os.unlink(path)
    while children:
        _reap(children)
        time.sleep(0.2)


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(f"exit {code if code >= 0 else 128 - code}\n".encode())
            except OSError:
                pass
            conn.close()


def start(threads: int, log: Path) -> tuple[str, object] | None:
    """From Snakemake's process (onstart): a server for its local jobs; its socket path and process.
    Its environment is a job's: Snakemake sets THREAD_VARS to the job's threads (`threads: threads`)."""
    if os.environ.get(ENV) == "off":
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="cast-jobs-"), "socket")
    env = {**os.environ, **{k: str(threads) for k in THREAD_VARS}}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cast.jobserver", path, str(os.getpid())], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.environ[ENV] = path
    return path, proc


def stop(server) -> None:
    """From Snakemake's process (onsuccess/onerror): no new jobs; the server exits once the jobs it
    runs have ended."""
    path, proc = server
    os.environ.pop(ENV, None)
    proc.terminate()
    try:
        proc.wait(timeout=60)
        os.rmdir(os.path.dirname(path))
    except (subprocess.TimeoutExpired, OSError):
        pass


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
