"""The hive lifecycle on one host, through a `Connector`: preflight, push, start, stop, logs.

Everything lives under ``~/.rbee`` on the host (`RBEE_DIR`)::

    bin/rbee-<sha256>.pyz        the file, content-addressed; the previous one is kept
    hives/<name>/pid, file, log  the running hive: its pid, the file it runs, its output
    hives/<name>/token           the API token, mode 0600, read by the hive's start script

Each step is one remote command (one round trip), a fixed ``sh`` script whose inputs arrive as
positional arguments, each quoted by the connector: nothing a user typed is read by a shell.
The token reaches the host on the command's stdin, never on a command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import secrets
from collections.abc import Collection, Sequence
from pathlib import Path

from rbee.errors import ApiError, SshError
from rbee.pythons import SUPPORTED, is_supported
from rbee.queen.lifecycle.connector import Connector, Progress
from rbee.ssh import Completed

__all__ = [
    "HIVE_DAEMON",
    "RBEE_DIR",
    "HostFacts",
    "choose_python",
    "file_name",
    "hive_argv",
    "hive_dir",
    "log_tail",
    "preflight",
    "push",
    "running_pid",
    "sha256_of",
    "start",
    "stop",
]

RBEE_DIR = ".rbee"
# The rbee subcommand that runs a hive daemon.
HIVE_DAEMON: tuple[str, ...] = ("hive", "daemon")
# Room the file needs beyond its own size: shiv unpacks it under ~/.shiv on first start.
UNPACK_FACTOR = 4
LOG_TAIL_LINES = 20

# Whether process $1 runs. A zombie does not: a hive that exited stays one until an init reaps
# it, which in some containers takes a second or more, and `kill -0` still finds it.
_ALIVE = r"""
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
    [ "$state" != Z ]
}
"""

_PREFLIGHT = (
    _ALIVE
    + r"""
dir=$1 file=$2 hive=$3 port=$4
shift 4
echo "os=$(uname -s)"
echo "arch=$(uname -m)"
# One run of each Python found, without site (a fraction of a normal start), printing its
# version; the first one found also tries the hive port, as the hive binds it (SO_REUSEADDR: the
# connections a stopped hive closed linger in TIME_WAIT and must not count). Syntax any Python 3
# parses.
probe='import socket, sys
version = "%d.%d" % sys.version_info[:2]
if sys.argv[1] == "-":
    print(version)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("", int(sys.argv[1])))
    except OSError:
        print(version + " port_free=0")
    else:
        print(version + " port_free=1")'
first=
for py in "$@"; do
    path=$(command -v "$py" 2>/dev/null) || continue
    try_port=$port
    [ -z "$first" ] || try_port=-
    out=$("$path" -I -S -c "$probe" "$try_port" 2>/dev/null) || continue
    version=${out%% *}
    printf 'python=%s %s\n' "$version" "$path"
    [ "$out" = "$version" ] || echo "${out#* }"
    [ -n "$first" ] || first=$path
done
if mkdir -p "$dir/bin" 2>/dev/null && [ -w "$dir/bin" ]; then echo writable=1; else echo writable=0; fi
d=$dir/bin
while [ ! -d "$d" ]; do d=$(dirname "$d"); done
echo "free_kb=$(df -Pk "$d" 2>/dev/null | awk 'NR == 2 {print $4}')"
[ -f "$dir/bin/$file" ] && echo have_file=1
if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | sed 's/^/gpu=/'
fi
if pid=$(cat "$dir/hives/$hive/pid" 2>/dev/null) && alive "$pid"; then
    echo "running=$pid $(cat "$dir/hives/$hive/file" 2>/dev/null)"
    tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | sed 's/^/arg=/'
fi
"""
)

_INSTALL = r"""
tmp=$1 final=$2 sha=$3 dir=$4
got=$(sha256sum "$tmp" | cut -d ' ' -f 1)
if [ "$got" != "$sha" ]; then
    rm -f "$tmp"
    echo "the copy's sha256 is $got, not $sha" >&2
    exit 1
fi
chmod 0755 "$tmp" && mv -f "$tmp" "$final" || exit 1
ls -t "$dir"/bin/rbee-*.pyz | tail -n +3 | while read -r old; do rm -f "$old"; done
"""

_START = r"""
hivedir=$1 file=$2
shift 2
mkdir -p "$hivedir" || exit 1
(umask 077 && cat > "$hivedir/token") || exit 1
RBEE_HIVE_TOKEN=$(cat "$hivedir/token")
export RBEE_HIVE_TOKEN
printf '%s\n' "$file" > "$hivedir/file"
: > "$hivedir/log"
setsid nohup "$@" >> "$hivedir/log" 2>&1 < /dev/null &
echo $! > "$hivedir/pid"
echo $!
"""

_STOP = (
    _ALIVE
    + r"""
hivedir=$1 grace=$2
pid=$(cat "$hivedir/pid" 2>/dev/null) || { echo none; exit 0; }
rm -f "$hivedir/pid"
kill -TERM "$pid" 2>/dev/null || { echo gone; exit 0; }
i=0
while alive "$pid"; do
    i=$((i + 1))
    if [ "$i" -gt "$grace" ]; then kill -KILL "$pid" 2>/dev/null; echo killed; exit 0; fi
    sleep 0.1
done
echo stopped
"""
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_name(sha256: str) -> str:
    """The content-addressed name of the file on a host."""
    return f"rbee-{sha256}.pyz"


def hive_dir(hive: str) -> str:
    return f"{RBEE_DIR}/hives/{hive}"


def hive_argv(
    command: Sequence[str],
    queen_url: str,
    *,
    name: str,
    host: str = "",
    port: int = 0,
    heartbeat_interval_s: float = 1.0,
    models_dir: str = "",
) -> list[str]:
    """The command line that runs hive ``name`` with ``command`` (``[python, file]``)."""
    argv = [*command, *HIVE_DAEMON, "--queen", queen_url, "--port", str(port), "--name", name]
    argv += ["--heartbeat-interval", f"{heartbeat_interval_s:g}"]
    if host:
        argv += ["--host", host]
    if models_dir:
        argv += ["--models-dir", models_dir]
    return argv


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What one preflight round trip found on a host."""

    os: str = ""
    arch: str = ""
    pythons: tuple[tuple[str, tuple[int, int]], ...] = ()
    writable: bool = False
    free_bytes: int = 0
    gpus: tuple[str, ...] = ()
    have_file: bool = False
    port_free: bool | None = None
    running_pid: int = 0
    running_file: str = ""
    running_argv: tuple[str, ...] = ()

    def running_option(self, option: str) -> str:
        """The value of ``option`` (``--queen``) on the running hive's command line, or ""."""
        argv = self.running_argv
        for i, arg in enumerate(argv[:-1]):
            if arg == option:
                return argv[i + 1]
        return ""


def _parse_facts(out: str) -> HostFacts:
    values: dict[str, object] = {}
    pythons: list[tuple[str, tuple[int, int]]] = []
    gpus: list[str] = []
    argv: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "python":
            version, _, path = value.partition(" ")
            major, _, minor = version.partition(".")
            if major.isdigit() and minor.isdigit():
                pythons.append((path, (int(major), int(minor))))
        elif key == "gpu":
            gpus.append(value)
        elif key == "arg":
            argv.append(value)
        elif key == "running":
            pid, _, running = value.partition(" ")
            values["running_pid"] = int(pid) if pid.isdigit() else 0
            values["running_file"] = running
        elif key in ("os", "arch"):
            values[key] = value
        elif key in ("writable", "have_file") or key == "port_free":
            values[key] = value == "1"
        elif key == "free_kb" and value.isdigit():
            values["free_bytes"] = int(value) * 1024
    return HostFacts(
        pythons=tuple(pythons),
        gpus=tuple(gpus),
        running_argv=tuple(argv),
        **values,  # type: ignore[arg-type]
    )


def _candidates(python: str) -> list[str]:
    if python:
        return [python]
    newest_first = sorted(SUPPORTED, reverse=True)
    return [*(f"python{major}.{minor}" for major, minor in newest_first), "python3"]


async def _script(
    connector: Connector, script: str, args: Sequence[str], stdin: str | None = None
) -> Completed:
    return await connector.run(["sh", "-c", script, "sh", *args], stdin=stdin)


async def preflight(
    connector: Connector, *, hive: str, file: str, port: int, python: str = ""
) -> HostFacts:
    """Read the host's facts in one round trip: OS, CPU, Pythons, disk, GPUs, port, hive."""
    done = await _script(
        connector, _PREFLIGHT, [RBEE_DIR, file, hive, str(port), *_candidates(python)]
    )
    if done.exit_status != 0 and not done.stdout:
        raise SshError(f"preflight on {connector.where} failed: {done.stderr.strip()[:300]}")
    return _parse_facts(done.stdout)


def _version(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def choose_python(
    facts: HostFacts, python: str, accepts: Collection[tuple[int, int]]
) -> tuple[str, str]:
    """The interpreter to run the file with, and its version; `ApiError` when there is none."""
    names = [_version(v) for v in sorted(accepts)]
    wanted = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    usable = [(path, v) for path, v in facts.pythons if v in accepts and is_supported(v)]
    if usable:
        return usable[0][0], _version(usable[0][1])
    found = ", ".join(f"{_version(v)} at {path}" for path, v in facts.pythons) or "none"
    if python:
        return "", (
            f"--python {python} is Python {found.split(' at ')[0]} there, and this rbee.pyz needs "
            f"Python {wanted}: point --python at a Python {wanted} interpreter"
            if facts.pythons
            else f"--python {python} does not run there: give the path of a Python {wanted}"
        )
    return "", (
        f"no Python {wanted} there (found: {found}): install python{names[-1]} or "
        "pass --python PATH"
    )


def check(
    facts: HostFacts,
    *,
    where: str,
    python: str,
    size: int,
    port: int,
    accepts: Collection[tuple[int, int]],
) -> str:
    """The interpreter to use, or `ApiError` (409) naming every check that failed, with the fix."""
    problems: list[str] = []
    if facts.os != "Linux":
        problems.append(f"it runs {facts.os or 'an unknown OS'}; hives run on Linux")
    ours = platform.machine()
    if facts.arch and facts.arch != ours:
        problems.append(f"it is {facts.arch} and this rbee.pyz is built for {ours}")
    interpreter, why = choose_python(facts, python, accepts)
    if not interpreter:
        problems.append(why)
    if not facts.writable:
        problems.append(
            f"~/{RBEE_DIR}/bin is not writable there: make ~/{RBEE_DIR} writable by its user"
        )
    elif not facts.have_file and facts.free_bytes < size * UNPACK_FACTOR:
        problems.append(
            f"not enough disk space: {facts.free_bytes / 2**20:.0f} MB free at ~/{RBEE_DIR}/bin, "
            f"{size * UNPACK_FACTOR / 2**20:.0f} MB needed (the file and its unpacked copy)"
        )
    if facts.port_free is False and not facts.running_pid:
        problems.append(f"port {port} is in use there: stop what listens on it")
    if problems:
        raise ApiError(f"cannot start a hive on {where}: " + "; ".join(problems), 409)
    return interpreter


async def push(
    connector: Connector, local: Path, sha256: str, progress: Progress | None = None
) -> str:
    """Copy ``local`` to the host as ``~/.rbee/bin/rbee-<sha256>.pyz``; return its path there.

    Written under a temporary name, checked against ``sha256`` on the host, then renamed; the
    newest file before it stays for a rollback, older ones go.
    """
    final = f"{RBEE_DIR}/bin/{file_name(sha256)}"
    tmp = f"{RBEE_DIR}/bin/.{file_name(sha256)}.{secrets.token_hex(4)}"
    await connector.put_file(local, tmp, progress)
    done = await _script(connector, _INSTALL, [tmp, final, sha256, RBEE_DIR])
    if done.exit_status != 0:
        raise SshError(f"installing the file on {connector.where} failed: {done.stderr.strip()}")
    return final


async def start(
    connector: Connector, hive: str, argv: Sequence[str], token: str, file: str = ""
) -> int:
    """Start the hive detached from the session (it outlives it); return its pid.

    ``file`` is the file it runs (default ``argv[1]``). ``token`` goes to the host on stdin,
    into a 0600 file.
    """
    args = [hive_dir(hive), file or argv[1], *argv]
    done = await _script(connector, _START, args, stdin=token)
    pid = done.stdout.strip()
    if done.exit_status != 0 or not pid.isdigit():
        raise SshError(f"starting the hive on {connector.where} failed: {done.stderr.strip()}")
    return int(pid)


async def running_pid(connector: Connector, pid: int) -> bool:
    """Whether process ``pid`` still runs on the host."""
    done = await _script(connector, _ALIVE + 'alive "$1"', [str(pid)])
    return done.exit_status == 0


async def stop(connector: Connector, hive: str, grace_s: float = 20.0) -> str:
    """Stop the hive: SIGTERM (it retires its workers), ``grace_s``, SIGKILL.

    Returns ``stopped``, ``killed``, ``gone`` (its pid had ended) or ``none`` (never started).
    """
    done = await _script(connector, _STOP, [hive_dir(hive), str(int(grace_s * 10))])
    return done.stdout.strip() or "none"


async def log_tail(connector: Connector, hive: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of the hive's output on the host."""
    done = await connector.run(["tail", "-n", str(lines), f"{hive_dir(hive)}/log"])
    return done.stdout.splitlines()
