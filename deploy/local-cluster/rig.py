"""A multi-host raylane cluster on one Linux machine, built from network and mount namespaces.

    sudo python deploy/local-cluster/rig.py up        # or: make cluster-up
    sudo python deploy/local-cluster/rig.py exec client -- ray job list
    sudo python deploy/local-cluster/rig.py down      # or: make cluster-down

Five hosts sit on a private bridge with no route out of the machine, on addresses from
198.18.0.0/15 (RFC 2544, reserved for such tests):

    services  198.18.0.10   PostgreSQL, an S3-compatible server (moto), `mlflow server` on both
    head      198.18.0.11   `ray start --head` (token auth), the job drivers, Serve's controller
    worker-1  198.18.0.12   `ray start --address head:6379`: Train workers, trials, Serve replicas
    worker-2  198.18.0.13
    client    198.18.0.20   `ray job submit`, HTTP calls to the endpoint: a workstation

Each host has its own network namespace (one veth pair onto the bridge) and its own mount
namespace, where `/tmp` (Ray's session folders, the host's working directory and HOME) and
`/dev/shm` (Ray's object store) are private. What the hosts share is what real hosts share: the
installed software (the virtualenv, as an image would carry it) and S3. A local `storage_path`
therefore fails raylane's storage check here, as it would on real hosts.

Everything is run as root (namespaces need it). `down` kills every process of every host by PID
(each host's processes are the ones in its network namespace), then removes the namespaces, the
bridge and the rig's folder; `up` does the same if it is interrupted or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

RIG_DIR = Path(os.environ.get("RAYLANE_RIG_DIR", "/var/tmp/raylane-rig"))
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # the hosts run the same installed software as this script
BRIDGE = "rlbr0"
SUBNET = "198.18.0"
PREFIX = 24


@dataclass(frozen=True)
class Host:
    name: str
    ip: str

    @property
    def netns(self) -> str:
        return f"rl-{self.name}"

    @property
    def veth(self) -> str:  # the machine's end of the host's veth pair (<= 15 characters)
        return f"rlv-{self.name}"

    @property
    def root(self) -> Path:  # the host's own files, outside its namespaces (its /tmp and /dev/shm)
        return RIG_DIR / "hosts" / self.name

    @property
    def mntns(self) -> Path:
        return RIG_DIR / "ns" / self.name

    @property
    def utsns(self) -> Path:
        return RIG_DIR / "ns" / f"{self.name}.uts"


SERVICES = Host("services", f"{SUBNET}.10")
HEAD = Host("head", f"{SUBNET}.11")
WORKERS = (Host("worker-1", f"{SUBNET}.12"), Host("worker-2", f"{SUBNET}.13"))
CLIENT = Host("client", f"{SUBNET}.20")
HOSTS = {h.name: h for h in (SERVICES, HEAD, *WORKERS, CLIENT)}

# The services' ports and settings, and what clients put in their configs.
PG_PORT, S3_PORT, MLFLOW_PORT = 5432, 9000, 5000
RAY_PORT, DASHBOARD_PORT, SERVE_PORT = 6379, 8265, 8000
TRACKING_URI = f"http://{SERVICES.ip}:{MLFLOW_PORT}"
S3_ENDPOINT = f"http://{SERVICES.ip}:{S3_PORT}"
RUNS_BUCKET, MLFLOW_BUCKET = "raylane", "mlflow"
S3_OPTIONS = f"endpoint_override={SERVICES.ip}:{S3_PORT}&scheme=http&region=us-east-1&allow_delayed_open=true"
STORAGE_PATH = f"s3://{RUNS_BUCKET}/runs?{S3_OPTIONS}"
JOB_ADDRESS = f"http://{HEAD.ip}:{DASHBOARD_PORT}"
ENDPOINT = f"http://{HEAD.ip}:{SERVE_PORT}"
# Logical CPUs per node. The head takes no Train workers or replicas (num-cpus 0, as on a real
# cluster): the job drivers run there. Each worker host fits one trial's two workers, so losing one
# leaves room to go on.
WORKER_CPUS = 4
OBJECT_STORE_BYTES = 300 * 1024 * 1024
SHM_SIZE = "1g"
AWS = {"AWS_ACCESS_KEY_ID": "rig", "AWS_SECRET_ACCESS_KEY": "rig-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def log(message: str) -> None:
    print(f"[rig] {message}", flush=True)


def sh(*argv: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    """Runs a command on the machine itself (not in a host)."""
    pipe = subprocess.PIPE if quiet else None
    return subprocess.run(argv, check=check, text=True, stdout=pipe, stderr=pipe)


# -- the hosts' environment and commands -----------------------------------------------------------


def state() -> dict:
    path = RIG_DIR / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(**changes: object) -> None:
    RIG_DIR.mkdir(parents=True, exist_ok=True)
    (RIG_DIR / "state.json").write_text(json.dumps({**state(), **changes}, indent=2))


def host_env(host: Host, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every process of a host starts with: its own HOME in its private /tmp, the
    installed software first on PATH, Ray's token auth, the S3 and MLflow addresses."""
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp/home", "USER": "root", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
        "HOSTNAME": host.name,
        "RAY_AUTH_MODE": "token",  # the token itself: $HOME/.ray/auth_token, written by `up`
        "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
        "MLFLOW_TRACKING_URI": TRACKING_URI, "MLFLOW_S3_ENDPOINT_URL": S3_ENDPOINT,
        "RAYLANE_RIG_HOST": host.name, **AWS,
        # A workstation reaches the cluster through the head's job server.
        **({"RAY_ADDRESS": JOB_ADDRESS} if host is CLIENT else {}),
    }
    return {**env, **(extra or {})}


def host_argv(host: Host, argv: Sequence[str], cwd: str = "/tmp/home") -> list[str]:
    """`argv` as run inside the host: its network and mount namespaces, its working directory."""
    uts = [f"--uts={host.utsns}"] if host.utsns.exists() else []
    return ["nsenter", f"--net=/run/netns/{host.netns}", f"--mount={host.mntns}", *uts, f"--wdns={cwd}",
            "--", *argv]


def run(host: str | Host, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str = "/tmp/home",
        check: bool = True, capture: bool = True, timeout: float | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Runs a command on a host and waits for it; returns the completed process."""
    host = HOSTS[host] if isinstance(host, str) else host
    result = subprocess.run(host_argv(host, argv, cwd), env=host_env(host, env), text=True, timeout=timeout,
                            capture_output=capture, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"on {host.name}: {shlex.join(argv)} exited {result.returncode}\n"
                           f"{(result.stdout or '')[-3000:]}{(result.stderr or '')[-3000:]}")
    return result


def spawn(host: str | Host, argv: Sequence[str], log_name: str, *, env: dict[str, str] | None = None,
          cwd: str = "/tmp/home") -> subprocess.Popen:
    """Starts a long-running command on a host, its output in the rig's log folder."""
    host = HOSTS[host] if isinstance(host, str) else host
    logs = RIG_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{host.name}-{log_name}.log", "ab")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(host_argv(host, argv, cwd), env=host_env(host, env), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def pids(host: str | Host) -> list[int]:
    """The PIDs of every process of a host: those in its network namespace."""
    host = HOSTS[host] if isinstance(host, str) else host
    result = sh("ip", "netns", "pids", host.netns, check=False, quiet=True)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def kill_host_processes(host: str | Host, sig: int = signal.SIGKILL) -> int:
    """Kills every process of a host by PID; returns how many there were."""
    found = pids(host)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return len(found)


def wait_for(what: str, probe, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
        except Exception as err:  # noqa: BLE001 (the last error is reported on timeout)
            result, last = None, err
        else:
            last = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s" + (f": {last}" if last else ""))
        time.sleep(interval)


def http_ok(host: str, url: str, timeout: float = 3) -> bool:
    """True if `url` answers (any status below 500) from `host`."""
    code = run(host, ["python", "-c", (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    urllib.request.urlopen({url!r}, timeout={timeout})\n"
        "except urllib.error.HTTPError as e:\n"
        "    sys.exit(0 if e.code < 500 else 1)\n"
        "except Exception:\n"
        "    sys.exit(1)\n")], check=False, timeout=timeout + 30).returncode
    return code == 0


# -- building and removing the hosts ----------------------------------------------------------------


def build_network() -> None:
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "link", "set", BRIDGE, "up")
    # A bridge without an address and hosts without a default route: nothing leaves the machine.
    for host in HOSTS.values():
        sh("ip", "netns", "add", host.netns)
        sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        sh("ip", "link", "set", host.veth, "master", BRIDGE)
        sh("ip", "link", "set", host.veth, "up")
        for argv in (["ip", "link", "set", "lo", "up"],
                     ["ip", "addr", "add", f"{host.ip}/{PREFIX}", "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"]):
            sh("ip", "netns", "exec", host.netns, *argv)


def build_mounts() -> None:
    """A persistent mount namespace per host, with private /tmp and /dev/shm, and a UTS namespace
    with the host's name, which its /etc/hosts resolves to its address (as on a real host: PyTorch's
    gloo binds to the address the hostname resolves to)."""
    hosts_file = "127.0.0.1 localhost\n" + "".join(f"{h.ip} {h.name}\n" for h in HOSTS.values())
    ns_dir = RIG_DIR / "ns"
    ns_dir.mkdir(parents=True, exist_ok=True)
    # A namespace is kept alive by bind-mounting it on a file, which needs a private parent mount.
    if sh("mountpoint", "-q", str(ns_dir), check=False).returncode != 0:
        sh("mount", "--bind", str(ns_dir), str(ns_dir))
    sh("mount", "--make-private", str(ns_dir))
    for host in HOSTS.values():
        for sub in ("tmp/home/.ray", "shm"):
            (host.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(host.root / "tmp", 0o1777)
        (host.root / "hosts").write_text(hosts_file)
        host.mntns.touch()
        # A checkout or virtualenv under /tmp stays visible, at its path, in the host's own /tmp.
        keep = "".join(f"mkdir -p {host.root / 'tmp' / path.relative_to('/tmp')} && "
                       f"mount --bind {path} {host.root / 'tmp' / path.relative_to('/tmp')} && "
                       for path in shared_under_tmp())
        setup = (f"mount --make-rprivate / && {keep}mount --rbind {host.root / 'tmp'} /tmp && "
                 f"mount -t tmpfs -o size={SHM_SIZE} rig-shm /dev/shm && "
                 f"mount --bind {host.root / 'hosts'} /etc/hosts")
        sh("unshare", f"--mount={host.mntns}", "--propagation", "private", "sh", "-c", setup)
        host.utsns.touch()
        sh("unshare", f"--uts={host.utsns}", "hostname", host.name)


def write_tokens() -> None:
    """Ray's auth token in each host's ~/.ray/auth_token, and the endpoint's bearer token in the
    Ray hosts' /tmp/home/serve-tokens (serve.auth.token_file) and the client's: mode 600, as a
    cluster's admin hands them out."""
    ray_token, serve_token = secrets.token_hex(32), secrets.token_urlsafe(32)
    for host in HOSTS.values():
        for path, text in ((host.root / "tmp/home/.ray/auth_token", ray_token),
                           (host.root / "tmp/home/serve-tokens", f"{serve_token}\n")):
            if host is not SERVICES:
                path.write_text(text)
                path.chmod(0o600)


def start_services() -> dict[str, int]:
    """PostgreSQL, moto and the MLflow server on the services host; returns their PIDs."""
    pg_bin = _pg_bin()
    data = SERVICES.root / "pgdata"  # outside /tmp's tmpfs-like churn, owned by postgres
    data.mkdir(parents=True, exist_ok=True)
    shutil.chown(data, "postgres", "postgres")
    pw_file = SERVICES.root / "pgpass"
    password = secrets.token_hex(16)
    pw_file.write_text(password)
    shutil.chown(pw_file, "postgres", "postgres")
    run(SERVICES, ["runuser", "-u", "postgres", "--", f"{pg_bin}/initdb", "-D", str(data), "-U", "postgres",
                   "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pw_file}"], cwd="/")
    pg_log = RIG_DIR / "logs/services-postgres.log"
    pg_log.touch()
    shutil.chown(pg_log, "postgres", "postgres")
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {SUBNET}.0/{PREFIX} scram-sha-256\n")
    run(SERVICES, ["runuser", "-u", "postgres", "--", f"{pg_bin}/pg_ctl", "-D", str(data), "-w",
                   "-l", str(pg_log), "-o", f"-c listen_addresses={SERVICES.ip} -p {PG_PORT} -k /tmp",
                   "start"], cwd="/")
    run(SERVICES, ["runuser", "-u", "postgres", "--", f"{pg_bin}/psql", "-h", "/tmp", "-p", str(PG_PORT),
                   "-v", "ON_ERROR_STOP=1", "-c", f"CREATE USER mlflow PASSWORD '{password}'",
                   "-c", "CREATE DATABASE mlflow OWNER mlflow"], cwd="/")
    save_state(pg_password=password)

    moto = spawn(SERVICES, ["moto_server", "-H", SERVICES.ip, "-p", str(S3_PORT)], "s3")
    wait_for("the S3 server", lambda: http_ok("services", S3_ENDPOINT), 180)
    run(SERVICES, ["python", "-c", "import boto3\n"
                   f"s3 = boto3.client('s3', endpoint_url={S3_ENDPOINT!r})\n"
                   f"[s3.create_bucket(Bucket=b) for b in ({RUNS_BUCKET!r}, {MLFLOW_BUCKET!r})]"])
    mlflow = start_mlflow()
    return {"s3": moto.pid, "mlflow": mlflow}


def backend_store_uri() -> str:
    return f"postgresql+psycopg://mlflow:{state()['pg_password']}@{SERVICES.ip}:{PG_PORT}/mlflow"


def start_mlflow(wait: bool = True) -> int:
    """`mlflow server` on PostgreSQL, artifacts proxied to S3; returns its PID."""
    server = spawn(SERVICES, ["mlflow", "server", "--backend-store-uri", backend_store_uri(),
                              "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts",
                              "--serve-artifacts",
                              "--host", SERVICES.ip, "--port", str(MLFLOW_PORT), "--workers", "2",
                              "--allowed-hosts", f"{SERVICES.ip}:{MLFLOW_PORT},{SERVICES.ip}",
                              # uvicorn restarts a worker that does not answer its health check in 5 s;
                              # importing MLflow on a busy 2-core machine takes longer, and the
                              # server then restarted its workers for minutes.
                              "--uvicorn-opts", "--timeout-worker-healthcheck 60"], "mlflow")
    save_state(mlflow_pid=server.pid)
    if wait:
        wait_for("the MLflow server", lambda: http_ok("client", f"{TRACKING_URI}/health"), 180, interval=1)
    return server.pid


def stop_mlflow() -> None:
    """Kills the MLflow server and its workers (the processes of its session), by PID."""
    pid = state().get("mlflow_pid")
    if pid and pid in pids(SERVICES):  # never a reused PID outside the rig
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _pg_bin() -> str:
    """The PostgreSQL server's binaries, installed from Debian's packages first if missing."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        log("PostgreSQL's server is not installed: apt-get install postgresql ...")
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=apt,
                       stdout=subprocess.DEVNULL)
        # (Debian's own cluster, if the package starts one, listens in the machine's namespace: the
        # rig's runs in the services host's, on its own address.)
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return str(found[-1].parent)


def start_ray(host: Host, head: bool = False) -> None:
    """`ray start` on a host (the head, or a worker joining it), token auth on."""
    common = ["--node-ip-address", host.ip, "--object-store-memory", str(OBJECT_STORE_BYTES),
              "--disable-usage-stats"]
    if head:
        argv = ["ray", "start", "--head", "--port", str(RAY_PORT), "--dashboard-host", host.ip,
                "--dashboard-port", str(DASHBOARD_PORT), "--num-cpus", "0", *common]
    else:
        argv = ["ray", "start", "--address", f"{HEAD.ip}:{RAY_PORT}", "--num-cpus", str(WORKER_CPUS), *common]
    run(host, argv, timeout=180)


def alive_nodes() -> list[str]:
    """The IPs of the Ray nodes the cluster counts alive (a driver needs a raylet: asked on the head)."""
    out = run(HEAD, ["python", "-c", "import json, ray\n"
                       f"ray.init(address={HEAD.ip + ':' + str(RAY_PORT)!r}, logging_level='ERROR',"
                       " log_to_driver=False)\n"
                       "print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]))"],
              timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def wait_for_nodes(expected: set[str], timeout: float = 180) -> float:
    """Waits until exactly the nodes at `expected` are alive; returns the seconds it took."""
    start = time.monotonic()
    wait_for(f"Ray nodes {sorted(expected)}", lambda: set(alive_nodes()) == expected, timeout, interval=1)
    return time.monotonic() - start


def check_can_build() -> None:
    """Exits, naming why, if a rig is up already or the installed software would be hidden."""
    bridge = sh("ip", "link", "show", BRIDGE, check=False, quiet=True)
    if (RIG_DIR / "state.json").exists() or bridge.returncode == 0:
        sys.exit(f"a rig is already up (or was not cleaned up): run `{Path(__file__).name} down` first")
    for path in (REPO, VENV_BIN):
        if path.is_relative_to("/dev/shm"):
            sys.exit(f"{path} is under /dev/shm, which every host of the rig replaces with its own: "
                     "check out and install elsewhere")


def shared_under_tmp() -> list[Path]:
    """The checkout and the virtualenv, where they are under /tmp (each host has its own /tmp)."""
    paths = {p for p in (REPO, VENV_BIN.parent) if p.is_relative_to("/tmp")}
    return sorted(p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths))


def up() -> None:
    started = time.monotonic()
    RIG_DIR.mkdir(parents=True, exist_ok=True)
    (RIG_DIR / "logs").mkdir(exist_ok=True)
    save_state(created=time.time())
    log(f"hosts on bridge {BRIDGE} ({SUBNET}.0/{PREFIX}, no route out): "
        + ", ".join(f"{h.name} {h.ip}" for h in HOSTS.values()))
    build_network()
    build_mounts()
    write_tokens()
    log("services: PostgreSQL, S3 (moto), mlflow server ...")
    services = start_services()
    save_state(**services)
    log(f"MLflow server {TRACKING_URI} (PostgreSQL, artifacts in s3://{MLFLOW_BUCKET}), S3 {S3_ENDPOINT}")
    log("ray start --head (token auth) ...")
    start_ray(HEAD, head=True)
    for worker in WORKERS:
        joined = time.monotonic()
        start_ray(worker)
        log(f"{worker.name} joined in {time.monotonic() - joined:.1f} s")
    wait_for_nodes({HEAD.ip, *(w.ip for w in WORKERS)})
    log(f"up in {time.monotonic() - started:.0f} s: jobs at {JOB_ADDRESS} (token in each host's "
        f"~/.ray/auth_token), logs in {RIG_DIR / 'logs'}; run commands with "
        f"`python {Path(__file__).relative_to(REPO)} exec client -- ...`")


def down(keep_logs: bool = False) -> None:
    """Removes everything `up` made, whatever state it is in. Safe to run twice."""
    for host in HOSTS.values():
        if killed := kill_host_processes(host):
            log(f"{host.name}: killed {killed} processes")
    time.sleep(0.5)
    for host in HOSTS.values():
        kill_host_processes(host)  # anything forked while the first pass ran
        for ns in (host.mntns, host.utsns):
            if ns.exists():
                sh("umount", str(ns), check=False, quiet=True)
        sh("ip", "link", "del", host.veth, check=False, quiet=True)
        sh("ip", "netns", "del", host.netns, check=False, quiet=True)
    sh("ip", "link", "del", BRIDGE, check=False, quiet=True)
    ns_dir = RIG_DIR / "ns"
    if ns_dir.exists():
        sh("umount", str(ns_dir), check=False, quiet=True)
    if RIG_DIR.exists():
        if keep_logs and (RIG_DIR / "logs").exists():
            kept = Path(f"{RIG_DIR}-logs")
            shutil.rmtree(kept, ignore_errors=True)
            shutil.move(str(RIG_DIR / "logs"), kept)
            log(f"logs kept in {kept}")
        shutil.rmtree(RIG_DIR, ignore_errors=True)
    log("down: hosts, bridge and processes removed")


@contextlib.contextmanager
def cleanup_on_interrupt() -> Iterator[None]:
    """Tears the rig down if `up` fails or is interrupted (Ctrl-C, SIGTERM from CI)."""
    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except BaseException:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not stop the cleanup
            signal.signal(sig, signal.SIG_IGN)
        log("interrupted or failed: removing what was built")
        down(keep_logs=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rig.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build the hosts and start the services and Ray")
    down_cmd = sub.add_parser("down", help="kill every process of every host, remove hosts and bridge")
    down_cmd.add_argument("--keep-logs", action="store_true", help=f"keep the logs in {RIG_DIR}-logs")
    exec_cmd = sub.add_parser("exec", help="run a command on a host: exec HOST -- COMMAND ...")
    exec_cmd.add_argument("host", choices=sorted(HOSTS))
    exec_cmd.add_argument("argv", nargs=argparse.REMAINDER)
    sub.add_parser("status", help="the hosts, their process counts and the Ray nodes alive")
    sub.add_parser("env", help="print the addresses a client puts in its config, as shell variables")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the rig builds network and mount namespaces: run it as root")
    if args.command == "up":
        check_can_build()
        with cleanup_on_interrupt():
            up()
    elif args.command == "down":
        down(keep_logs=args.keep_logs)
    elif args.command == "exec":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        host = HOSTS[args.host]
        return subprocess.call(host_argv(host, command or ["bash"], cwd=os.getcwd() if args.host == "client"
                                         else "/tmp/home"), env=host_env(host))
    elif args.command == "status":
        for host in HOSTS.values():
            print(f"{host.name:9} {host.ip:13} {len(pids(host))} processes")
        print("ray nodes alive:", ", ".join(sorted(alive_nodes())))
    elif args.command == "env":
        for name, value in {"RAY_ADDRESS": JOB_ADDRESS, "MLFLOW_TRACKING_URI": TRACKING_URI,
                            "RAYLANE_STORAGE_PATH": STORAGE_PATH, "RAYLANE_ENDPOINT": ENDPOINT}.items():
            print(f"{name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
