"""A fake SLURM for tests: just enough of sbatch/sacct/squeue/sinfo/scontrol/sacctmgr/sshare/srun/scancel
for snakemake-executor-plugin-slurm (2.x) and its jobstep plugin.

sbatch records the call, starts the job in the background (its own session, like a compute node) and
prints the job id; the job's final state (COMPLETED/FAILED) lands in a state folder that sacct/squeue
read. (A blocking sbatch would serialise the workflow: Snakemake waits for each submission to return.)
srun drops its own options and execs the rest; with --ntasks N > 1 it starts N copies, one per "node"
(SLURM_PROCID / SLURM_NODEID / SLURM_JOB_NODELIST set as a real step's tasks see them) and waits
for all. `scontrol show hostnames LIST` expands a node list. Environment:
  MOCK_SLURM_LOG         JSON lines, one per sbatch call: argv, parsed options, job id, script text
  MOCK_SLURM_STATE       state folder (default: <dir of MOCK_SLURM_LOG>/mock_slurm_state, else /tmp/...)
  MOCK_SLURM_ACCOUNTS    comma-separated accounts sacctmgr/sshare report (default: none, no validation)
  MOCK_SLURM_PARTITIONS  comma-separated partitions sinfo reports, '*' marks the default (default: cpu*,gpu)
  MOCK_SLURM_SACCT_WAIT  seconds a status query by --name may wait for the next job to finish (default 0)
  MOCK_SLURM_FAIL_FIRST  a --comment prefix (e.g. rule_tasks): the first matching job is recorded FAILED
                         without running (exercises retries)
  MOCK_SLURM_NODES       comma-separated host names of a multi-task step's nodes (default: localhost,
                         127.0.0.2, 127.0.0.3, ...: all this machine, so a rendezvous on the first works)
"""
from __future__ import annotations

import fcntl
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# sbatch/srun options that take a separate value when not written as --opt=value
_VALUE_OPTS = {
    "-A", "-p", "-t", "-C", "-D", "-J", "-o", "-e", "-n", "-c", "-N", "-G", "-w", "-x", "-q", "-a", "-d", "-m",
    "--account", "--partition", "--time", "--constraint", "--chdir", "--workdir", "--job-name", "--output",
    "--error", "--ntasks", "--cpus-per-task", "--cpus-per-gpu", "--nodes", "--gpus", "--gres", "--nodelist",
    "--exclude", "--qos", "--array", "--dependency", "--mem", "--mem-per-cpu", "--mem-per-gpu", "--comment",
    "--clusters", "-M", "--reservation", "--ntasks-per-node", "--ntasks-per-gpu", "--wrap", "--export",
    "--cpu-bind", "--distribution", "--gpus-per-task", "--time-min", "--signal", "--mail-type", "--mail-user",
}
_CANON = {"-A": "--account", "-p": "--partition", "-t": "--time", "-C": "--constraint", "-D": "--chdir",
          "--workdir": "--chdir", "-J": "--job-name", "-o": "--output", "-e": "--error", "-n": "--ntasks",
          "-c": "--cpus-per-task", "-N": "--nodes", "-G": "--gpus", "-q": "--qos", "-a": "--array",
          "-M": "--clusters", "-w": "--nodelist", "-x": "--exclude", "-d": "--dependency"}


def state_dir() -> Path:
    if os.environ.get("MOCK_SLURM_STATE"):
        d = Path(os.environ["MOCK_SLURM_STATE"])
    elif os.environ.get("MOCK_SLURM_LOG"):
        d = Path(os.environ["MOCK_SLURM_LOG"]).resolve().parent / "mock_slurm_state"
    else:
        d = Path("/tmp") / f"mock_slurm_state_{getpass.getuser()}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def _locked():
    with open(state_dir() / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _jobs_path() -> Path:
    return state_dir() / "jobs.json"


def load_jobs() -> dict:
    p = _jobs_path()
    return json.loads(p.read_text()) if p.exists() else {}


def update_job(jobid: str, **fields) -> None:
    with _locked():
        jobs = load_jobs()
        jobs.setdefault(jobid, {}).update(fields)
        tmp = _jobs_path().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(jobs, indent=1))
        os.replace(tmp, _jobs_path())


def _next_id() -> str:
    with _locked():
        counter = state_dir() / "counter"
        n = int(counter.read_text()) + 1 if counter.exists() else 1001
        counter.write_text(str(n))
    return str(n)


def _note(cmd: str, argv: list[str]) -> None:
    """Every call of every mock command, for debugging (state folder, calls.log)."""
    with _locked(), open(state_dir() / "calls.log", "a") as fh:
        fh.write(json.dumps({"cmd": cmd, "argv": argv, "time": time.time()}) + "\n")


def parse_options(argv: list[str]) -> tuple[dict, list[str]]:
    """Options up to the first positional argument -> ({--long-name: value or True}, positional rest).
    A repeated option keeps its last value."""
    opts: dict = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("-") or tok == "-":
            break
        if tok.startswith("--") and "=" in tok:
            key, value = tok.split("=", 1)
        elif tok in _VALUE_OPTS:
            if i + 1 >= len(argv):
                sys.exit(f"mock slurm: option {tok} needs a value")
            key, value = tok, argv[i + 1]
            i += 1
        elif not tok.startswith("--") and len(tok) > 2 and tok[:2] in _VALUE_OPTS:
            key, value = tok[:2], tok[2:]  # -n1
        else:
            key, value = tok, True
        opts[_CANON.get(key, key)] = value
        i += 1
    return opts, argv[i:]


def _expand(pattern: str, jobid: str, name: str, task: str | None) -> str:
    return (pattern.replace("%j", jobid).replace("%A", jobid).replace("%a", task or "0")
            .replace("%x", name).replace("%u", getpass.getuser()))


def _array_tasks(spec: str) -> list[int]:
    spec = spec.split("%")[0]
    tasks = []
    for part in spec.split(","):
        if "-" in part:
            rng, _, step = part.partition(":")
            lo, hi = (int(x) for x in rng.split("-"))
            tasks += list(range(lo, hi + 1, int(step or 1)))
        else:
            tasks.append(int(part))
    return tasks


def sbatch(argv: list[str]) -> int:
    """Record the call, start the job in the background (a detached `_mock.py run <id>`), print the id."""
    _note("sbatch", argv)
    opts, rest = parse_options(argv)
    if "--wrap" in opts:
        script = f"#!/bin/sh\n{opts['--wrap']}\n"
    elif rest:
        src = rest[0]
        script = sys.stdin.read() if src in ("-", "/dev/stdin") else Path(src).read_text()
    else:
        script = sys.stdin.read()
    jobid = _next_id()
    name = str(opts.get("--job-name", "sbatch"))
    comment = str(opts.get("--comment", ""))
    record = {"argv": argv, "options": opts, "jobid": jobid, "script": script, "cwd": os.getcwd()}
    log = os.environ.get("MOCK_SLURM_LOG")
    if log:
        with _locked(), open(log, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    update_job(jobid, name=name, comment=comment, state="PENDING", account=opts.get("--account", ""),
               partition=opts.get("--partition", ""))
    (state_dir() / f"job_{jobid}.sh").write_text(script)
    (state_dir() / f"job_{jobid}.json").write_text(json.dumps({"options": opts, "cwd": os.getcwd()}))
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), jobid], env=dict(os.environ),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    update_job(jobid, pid=proc.pid)
    print(jobid if "--parsable" in opts else f"Submitted batch job {jobid}")
    return 0


def run_job(jobid: str) -> int:
    """The 'compute node': run a submitted job script with SLURM_* set; record COMPLETED or FAILED."""
    spec = json.loads((state_dir() / f"job_{jobid}.json").read_text())
    opts = spec["options"]
    name = str(opts.get("--job-name", "sbatch"))
    comment = str(opts.get("--comment", ""))
    workdir = Path(str(opts.get("--chdir", spec["cwd"])))
    update_job(jobid, state="RUNNING")
    fail_first = os.environ.get("MOCK_SLURM_FAIL_FIRST")
    marker = state_dir() / f"failed_{fail_first}"
    if fail_first and comment.startswith(fail_first):
        with _locked():
            inject = not marker.exists()
            if inject:
                marker.write_text(jobid)
        if inject:
            update_job(jobid, state="FAILED", exit_code=1, injected=True)
            return 0
    tasks = _array_tasks(str(opts["--array"])) if "--array" in opts else [None]
    codes = []
    for task in tasks:
        env = dict(os.environ)
        env.update({"SLURM_JOB_ID": jobid, "SLURM_JOBID": jobid, "SLURM_JOB_NAME": name,
                    "SLURM_SUBMIT_DIR": spec["cwd"], "SLURM_CLUSTER_NAME": "mock",
                    "SLURM_JOB_PARTITION": str(opts.get("--partition", "")),
                    "SLURM_JOB_ACCOUNT": str(opts.get("--account", "")),
                    "SLURM_NTASKS": str(opts.get("--ntasks", 1)), "SLURM_JOB_NODELIST": "mocknode1"})
        if "--cpus-per-task" in opts:
            env["SLURM_CPUS_PER_TASK"] = str(opts["--cpus-per-task"])
        if "--gpus" in opts:
            env["SLURM_GPUS"] = str(opts["--gpus"])
        if task is not None:
            env.update({"SLURM_ARRAY_JOB_ID": jobid, "SLURM_ARRAY_TASK_ID": str(task),
                        "SLURM_ARRAY_TASK_MIN": str(min(tasks)), "SLURM_ARRAY_TASK_MAX": str(max(tasks))})
        out = Path(_expand(str(opts.get("--output", "slurm-%j.out")), jobid, name, None if task is None else str(task)))
        out = out if out.is_absolute() else workdir / out
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as fh:
            proc = subprocess.run(["/bin/sh", str(state_dir() / f"job_{jobid}.sh")], cwd=workdir, env=env,
                                  stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        codes.append(proc.returncode)
        if task is not None:
            update_job(f"{jobid}_{task}", name=name, comment=comment,
                       state="COMPLETED" if proc.returncode == 0 else "FAILED", exit_code=proc.returncode)
    ok = all(c == 0 for c in codes)
    update_job(jobid, state="COMPLETED" if ok else "FAILED", exit_code=max(codes))
    return 0


_FIELDS = {"jobidraw": lambda i, j: i, "jobid": lambda i, j: i, "state": lambda i, j: j.get("state", ""),
           "jobname": lambda i, j: j.get("name", ""), "account": lambda i, j: j.get("account", ""),
           "partition": lambda i, j: j.get("partition", ""), "nodelist": lambda i, j: "mocknode1",
           "exitcode": lambda i, j: f"{j.get('exit_code', 0)}:0", "reason": lambda i, j: "None",
           "comment": lambda i, j: j.get("comment", "")}


def _select(opts: dict) -> list[tuple[str, dict]]:
    jobs = load_jobs()
    if "--jobs" in opts or "-j" in opts:
        wanted = str(opts.get("--jobs", opts.get("-j"))).split(",")
        return [(w, jobs[w]) for w in wanted if w in jobs]
    name = opts.get("--name")
    return [(i, j) for i, j in jobs.items() if name is None or j.get("name") == name]


def _select_waiting(opts: dict) -> list[tuple[str, dict]]:
    """Status queries by --name long-poll: wait (up to MOCK_SLURM_SACCT_WAIT s, default 0) until a job
    finishes that no earlier query reported finished, so a test sees completions at once without
    shortening the plugin's status-check intervals."""
    wait = float(os.environ.get("MOCK_SLURM_SACCT_WAIT", "0"))
    name = opts.get("--name")
    seen_file = state_dir() / f"seen_{name}.json"
    seen = set(json.loads(seen_file.read_text())) if name and seen_file.exists() else set()
    deadline = time.time() + wait
    while True:
        rows = _select(opts)
        done = {i for i, j in rows if j.get("state") not in ("PENDING", "RUNNING")}
        active = len(rows) - len(done)
        if not name or done - seen or not active or time.time() >= deadline:
            break
        time.sleep(0.2)
    if name:
        seen_file.write_text(json.dumps(sorted(done | seen)))
    return rows


def sacct(argv: list[str]) -> int:
    _note("sacct", argv)
    opts, _ = _parse_query(argv, {"--format", "-o", "--name", "-j", "--jobs", "--starttime", "-S", "--endtime",
                                  "-E", "--clusters", "-M", "-u", "--user"})
    jobs = load_jobs()
    step_query = str(opts.get("-j", opts.get("--jobs", "")))
    if "." in step_query:  # job steps (failure reasons): none recorded
        return 0
    fields = [f.split("%")[0].strip().lower() for f in str(opts.get("--format", opts.get("-o", "JobID,State"))).split(",")]
    sep = "|" if ("--parsable2" in opts or "-P" in opts or "--parsable" in opts) else " "
    rows = _select_waiting(opts) if jobs else []
    if not ("--noheader" in opts or "-n" in opts):
        print(sep.join(f.capitalize() for f in fields))
    for jid, job in rows:
        print(sep.join(str(_FIELDS.get(f, lambda i, j: "")(jid, job)) for f in fields))
    return 0


def squeue(argv: list[str]) -> int:
    _note("squeue", argv)
    opts, _ = _parse_query(argv, {"--format", "-o", "--name", "-j", "--jobs", "--states", "-t", "-u", "--user"})
    fmt = str(opts.get("--format", opts.get("-o", "%i|%T")))
    if not ("--noheader" in opts or "-h" in opts):
        print(fmt.replace("%i", "JOBID").replace("%T", "STATE").replace("%j", "NAME"))
    for jid, job in _select_waiting(opts):
        print(fmt.replace("%i", jid).replace("%T", job.get("state", "")).replace("%j", job.get("name", ""))
              .replace("%P", job.get("partition", "")))
    return 0


def _parse_query(argv: list[str], valued: set) -> tuple[dict, list]:
    opts, rest, i = {}, [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and "=" in tok:
            k, v = tok.split("=", 1)
            opts[k] = v
        elif tok in valued and i + 1 < len(argv):
            opts[tok] = argv[i + 1]
            i += 1
        elif tok.startswith("-") and not tok.startswith("--") and len(tok) > 2:
            for ch in tok[1:]:  # bundled short flags: -nu -> -n -u (value of -u follows)
                opts[f"-{ch}"] = True
            if f"-{tok[-1]}" in valued and i + 1 < len(argv):
                opts[f"-{tok[-1]}"] = argv[i + 1]
                i += 1
        elif tok.startswith("-"):
            opts[tok] = True
        else:
            rest.append(tok)
        i += 1
    return opts, rest


def _partitions() -> list[str]:
    return [p.strip() for p in os.environ.get("MOCK_SLURM_PARTITIONS", "cpu*,gpu").split(",") if p.strip()]


def sinfo(argv: list[str]) -> int:
    _note("sinfo", argv)
    print("PARTITION")
    for p in _partitions():
        print(p)
    return 0


def scontrol(argv: list[str]) -> int:
    _note("scontrol", argv)
    if argv[:2] == ["show", "config"]:
        print("Configuration data as of mock\nMaxArraySize            = 1001\nMinJobAge               = 300 sec")
    elif argv[:2] == ["show", "hostnames"]:
        names = expand_nodelist(argv[2] if len(argv) > 2 else os.environ.get("SLURM_JOB_NODELIST", ""))
        try:
            print("\n".join(names), flush=True)
        except BrokenPipeError:  # `| head -n1`: the reader left early, as with the real scontrol
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    elif argv[:2] == ["show", "partition"]:
        for p in _partitions():
            name = p.rstrip("*")
            print(f"PartitionName={name}\n   MaxTime=UNLIMITED MaxNodes=UNLIMITED\n   State=UP TotalCPUs=64\n")
    return 0


def _accounts() -> list[str]:
    return [a.strip() for a in os.environ.get("MOCK_SLURM_ACCOUNTS", "").split(",") if a.strip()]


def sacctmgr(argv: list[str]) -> int:
    _note("sacctmgr", argv)
    for a in _accounts():
        print(a)
    return 0


def sshare(argv: list[str]) -> int:
    _note("sshare", argv)
    for a in _accounts():
        print(a)
    return 0


def scancel(argv: list[str]) -> int:
    """Kill the job's process group (started by sbatch) and record CANCELLED."""
    _note("scancel", argv)
    jobs = load_jobs()
    for jid in argv:
        if jid in jobs and jobs[jid].get("state") in ("PENDING", "RUNNING"):
            kill_job(jobs[jid])
            update_job(jid, state="CANCELLED")
    return 0


def kill_job(job: dict) -> None:
    pid = job.get("pid")
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def expand_nodelist(spec: str) -> list[str]:
    """'a,b[1-3,5]' -> ['a', 'b1', 'b2', 'b3', 'b5'] (SLURM's node-list syntax, one bracket per name)."""
    names, depth, part = [], 0, ""
    for ch in spec + ",":
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            if "[" in part:
                prefix, _, body = part.partition("[")
                for item in body.rstrip("]").split(","):
                    lo, _, hi = item.partition("-")
                    names += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi or lo) + 1)]
            elif part:
                names.append(part)
            part = ""
        else:
            part += ch
    return names


def _step_nodes(n: int) -> list[str]:
    given = [h for h in os.environ.get("MOCK_SLURM_NODES", "").split(",") if h]
    return (given or ["localhost"] + [f"127.0.0.{i + 1}" for i in range(1, n)])[:n]


def srun(argv: list[str]) -> int:
    """Drop srun's own options and run the rest: in this process (exec) for one task, else one
    process per task, each with its task's SLURM_* variables; the largest exit code wins."""
    _note("srun", argv)
    opts, rest = parse_options(argv)
    if not rest:
        sys.exit("mock srun: no command given")
    tasks = int(opts.get("--ntasks", 1))
    if tasks <= 1:
        os.execvp(rest[0], rest)
    nodes = _step_nodes(int(opts.get("--nodes", tasks)))
    env = {**os.environ, "SLURM_JOB_NODELIST": ",".join(nodes), "SLURM_NNODES": str(len(nodes)),
           "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks)}
    procs = [subprocess.Popen(rest, env={**env, "SLURM_PROCID": str(i), "SLURM_NODEID": str(i % len(nodes)),
                                         "SLURM_LOCALID": "0", "SLURMD_NODENAME": nodes[i % len(nodes)]})
             for i in range(tasks)]
    codes = []
    for proc in procs:
        codes.append(proc.wait())
        if codes[-1] and "--kill-on-bad-exit" in opts:
            for other in procs:
                other.terminate()
    return max(codes)


def main(cmd: str) -> None:
    sys.exit(globals()[cmd](sys.argv[1:]))


if __name__ == "__main__":  # the detached job runner started by sbatch
    sys.exit(run_job(sys.argv[1]))
