#!/usr/bin/env python3
"""Throwaway, loopback-only ejabberd (Debian 12: 23.01) for development and tests.

Stdlib only (Python 3.11). The same shape as local_prosody.LocalProsody::

    from local_ejabberd import LocalEjabberd
    with LocalEjabberd(Path(tmp)) as srv:      # writes config + starts
        srv.register("alice", "secret")        # ejabberdctl register (needs the node up)
        ...  # 127.0.0.1: srv.c2s_port, srv.component_port, srv.api_url

and as a CLI::

    python scripts/local_ejabberd.py up --dir /tmp/xmpp --user alice:pw --user bob:pw

Everything of the instance lives in ``workdir``: ejabberd.yml, ejabberdctl.cfg, the
Mnesia spool and the logs. It has its own Erlang node name and a fixed distribution
port (``ERL_DIST_PORT``: no epmd is started or asked), c2s, component and HTTP API
(mod_http_api) listeners on free 127.0.0.1 ports, and no s2s. mod_privilege grants
the component roster "both", message "outgoing" and presence "managed_entity"
through an access rule; ``api_permissions`` lets 127.0.0.1/8 call only the roster
commands the service uses (and ejabberdctl everything).

ejabberdctl drops from root to the ``ejabberd`` user: ``workdir`` is owned by it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from loopback import forget_at_exit, free_port, port_open, stop_at_exit

__all__ = ["LocalEjabberd", "LocalEjabberdError", "ensure_ejabberd_installed", "free_port", "EJABBERDCTL"]

EJABBERDCTL = "/usr/sbin/ejabberdctl"
INSTALL_SCRIPT = Path(__file__).resolve().parent / "install-ejabberd.sh"
DEFAULT_SECRET = "local-component-secret"
# The commands of mod_admin_extra that the service's `[roster] backend = "ejabberd_api"` calls.
ROSTER_COMMANDS = ("get_roster", "add_rosteritem", "delete_rosteritem")


class LocalEjabberdError(RuntimeError):
    """ejabberd could not be installed, configured, started or driven."""


def _log(msg: str) -> None:
    print(f"[local_ejabberd] {msg}", file=sys.stderr, flush=True)


def ensure_ejabberd_installed() -> None:
    """Run scripts/install-ejabberd.sh when ejabberdctl is missing (root needed then)."""
    if os.path.exists(EJABBERDCTL):
        return
    subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True)
    if not os.path.exists(EJABBERDCTL):
        raise LocalEjabberdError(f"{EJABBERDCTL} still missing after {INSTALL_SCRIPT}")


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


class LocalEjabberd:
    """An ejabberd node confined to ``workdir`` and 127.0.0.1."""

    def __init__(
        self,
        workdir: Path,
        domain: str = "example.test",
        component_jid: str = "presence.example.test",
        component_secret: str = DEFAULT_SECRET,
        c2s_port: int | None = None,
        component_port: int | None = None,
        api_port: int | None = None,
        dist_port: int | None = None,
        grant_roster: bool = True,
        extra_domains: tuple[str, ...] = (),
        include: str | None = None,
    ) -> None:
        """`include`: the operator's part of ejabberd.yml (the README's "ejabberd" section:
        the component and HTTP API listeners on `component_port` and `api_port`, the ACL,
        access rule, api_permissions and modules for the service), written beside the
        config and loaded with `include_config_file` instead of this module's own."""
        self.workdir = Path(workdir).resolve()
        self.include = include
        self.domain = domain
        self.extra_domains = tuple(extra_domains)
        self.component_jid = component_jid
        self.component_secret = component_secret
        ports: set[int] = set()

        def pick(given: int | None) -> int:
            port = given if given is not None else free_port()
            while port in ports:
                port = free_port()
            ports.add(port)
            return port

        self.c2s_port = pick(c2s_port)
        self.component_port = pick(component_port)
        self.api_port = pick(api_port)
        self.dist_port = pick(dist_port)
        self.grant_roster = grant_roster
        # Unique per instance: ejabberdctl finds the node by name and distribution port.
        self.node = f"ejabberd-local-{self.dist_port}@localhost"
        self.spool_path = self.workdir / "spool"
        self.logs_path = self.workdir / "logs"
        self.config_path = self.workdir / "ejabberd.yml"
        self.ctl_config_path = self.workdir / "ejabberdctl.cfg"
        self.include_path = self.workdir / "presence-service.yml"
        self.stderr_path = self.workdir / "ejabberd.stderr"
        self._proc: subprocess.Popen | None = None
        self._stderr_fh = None
        self._users: dict[tuple[str, str], str] = {}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.domain, *self.extra_domains)

    # ------------------------------------------------------------------ config
    def config_text(self) -> str:
        hosts = "".join(f"  - {_yaml_str(h)}\n" for h in self.hosts)
        base = f"""# Generated by scripts/local_ejabberd.py; overwritten on every start.
hosts:
{hosts}
loglevel: info
log_rotate_count: 0
acme:
  auto: false
s2s_access: none
auth_method: internal
default_db: mnesia
"""
        c2s = f"""  - port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: false
"""
        console = """  "console commands":
    from: ejabberd_ctl
    who: all
    what: "*"
"""
        if self.include is not None:
            # The operator's part comes from the include: ejabberd appends its listeners
            # and merges its maps (acl, access_rules, api_permissions, modules).
            return (
                f"{base}\ninclude_config_file:\n  - {_yaml_str(str(self.include_path))}\n\n"
                f"listen:\n{c2s}\napi_permissions:\n{console}\nmodules:\n"
                "  mod_disco: {}\n  mod_offline: {}\n  mod_roster: {}\n"
            )
        if self.grant_roster:
            privilege = (
                "  mod_privilege:\n"
                "    roster:\n"
                "      both: presence_privileges\n"
                "    message:\n"
                "      outgoing: presence_privileges\n"
                "    presence:\n"
                "      managed_entity: presence_privileges\n"
            )
        else:
            privilege = "  # no mod_privilege: the component gets no privilege\n"
        commands = "".join(f"      - {c}\n" for c in ROSTER_COMMANDS)
        return f"""{base}
listen:
{c2s}  - port: {self.component_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
      {_yaml_str(self.component_jid)}:
        password: {_yaml_str(self.component_secret)}
  - port: {self.api_port}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api

acl:
  presence_service:
    server: {_yaml_str(self.component_jid)}

access_rules:
  # mod_privilege takes access rule names, not ACL names.
  presence_privileges:
    allow: presence_service

api_permissions:
{console}  "presence service":
    from: mod_http_api
    who:
      ip: 127.0.0.1/8
    what:
{commands}
modules:
  mod_admin_extra: {{}}
  mod_disco: {{}}
  mod_http_api: {{}}
  mod_offline: {{}}
  mod_ping: {{}}
{privilege}  mod_roster: {{}}
"""

    def ctl_config_text(self) -> str:
        return f"""# Generated by scripts/local_ejabberd.py.
ERLANG_NODE={self.node}
# A fixed distribution port: the node and ejabberdctl need no epmd.
ERL_DIST_PORT={self.dist_port}
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {{127,0,0,1}}"
EJABBERD_BYPASS_WARNINGS=true
"""

    def write_config(self) -> Path:
        """(Re)write the config files and prepare the folders.  Idempotent."""
        for p in (self.workdir, self.spool_path, self.logs_path):
            p.mkdir(parents=True, exist_ok=True)
        # The config holds the component secret, the spool the accounts: for the
        # `ejabberd` user only (ejabberdctl runs the node as it).
        files = [(self.config_path, self.config_text()), (self.ctl_config_path, self.ctl_config_text())]
        if self.include is not None:
            files.append((self.include_path, self.include))
        for path, text in files:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        inetrc = Path("/etc/ejabberd/inetrc")
        if inetrc.exists():
            shutil.copyfile(inetrc, self.workdir / "inetrc")
        self._give_to_ejabberd()
        return self.config_path

    def _give_to_ejabberd(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("ejabberd")
        except KeyError:
            return
        for root, dirs, files in os.walk(self.workdir):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)
        os.chown(self.workdir, user.pw_uid, user.pw_gid)
        os.chmod(self.workdir, 0o700)
        # The folders above the workdir must be traversable (tempfile makes 0700 ones).
        parent = self.workdir.parent
        if parent != Path("/tmp") and parent.stat().st_uid == 0:
            os.chmod(parent, parent.stat().st_mode | 0o711)

    def _ctl_args(self) -> list[str]:
        return [
            EJABBERDCTL,
            "--config-dir", str(self.workdir),
            "--config", str(self.config_path),
            "--ctl-config", str(self.ctl_config_path),
            "--spool", str(self.spool_path),
            "--logs", str(self.logs_path),
        ]

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `ejabberdctl ARGS` against this node."""
        res = subprocess.run(
            [*self._ctl_args(), *args],
            cwd=str(self.workdir), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise LocalEjabberdError(
                f"ejabberdctl {' '.join(args[:1])} failed (rc={res.returncode}):\n{res.stdout}{res.stderr}"
            )
        return res

    # --------------------------------------------------------------- lifecycle
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in (self.logs_path / "ejabberd.log", self.logs_path / "error.log", self.stderr_path):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"--- {path} (last {lines} lines) ---")
            out.extend(text[-lines:])
        return "\n".join(out)

    def _api_up(self) -> bool:
        """mod_http_api answers (any HTTP status: the listener and module are up)."""
        request = urllib.request.Request(
            f"{self.api_url}/get_roster", data=b"{}", headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=2).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def start(self, timeout: float = 60) -> "LocalEjabberd":
        """Write the config, run `ejabberdctl foreground`, wait until every listener
        answers, then (re)register the users given to `register`."""
        if self.is_running():
            return self
        if not os.path.exists(EJABBERDCTL):
            raise LocalEjabberdError("ejabberd is not installed (see ensure_ejabberd_installed())")
        for port in (self.c2s_port, self.component_port, self.api_port, self.dist_port):
            if port_open(port):
                raise LocalEjabberdError(f"port 127.0.0.1:{port} is already in use")
        self.write_config()
        self._stderr_fh = open(self.stderr_path, "ab")
        self._proc = subprocess.Popen(
            [*self._ctl_args(), "foreground"],
            cwd=str(self.workdir),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr_fh,
            stderr=self._stderr_fh,
            start_new_session=True,  # own process group: stop() can end it all
        )
        stop_at_exit(self)
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._cleanup_handles()
                self._proc = None
                raise LocalEjabberdError(f"ejabberd exited with code {rc} during startup\n{self.log_tail()}")
            if all(port_open(p) for p in (self.c2s_port, self.component_port)) and self._api_up():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise LocalEjabberdError(f"ejabberd did not open its ports within {timeout}s\n{self.log_tail()}")
            time.sleep(0.1)
        for (user, domain), password in self._users.items():
            self._register_now(user, password, domain)
        return self

    def stop(self, timeout: float = 30) -> None:
        """`ejabberdctl stop`, then SIGTERM/SIGKILL the process group if need be.  Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self.ctl("stop", check=False, timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=5)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        self._proc = None
        self._cleanup_handles()
        forget_at_exit(self)

    def restart(self, timeout: float = 60) -> "LocalEjabberd":
        self.stop()
        return self.start(timeout=timeout)

    def _cleanup_handles(self) -> None:
        if self._stderr_fh is not None:
            self._stderr_fh.close()
            self._stderr_fh = None

    # ------------------------------------------------------------------- users
    def register(self, user: str, password: str, domain: str | None = None) -> None:
        """Create ``user@domain`` (default: the main domain): at once when the node
        runs, else when it starts (ejabberdctl talks to the running node)."""
        domain = domain or self.domain
        self._users[(user, domain)] = password
        if self.is_running():
            self._register_now(user, password, domain)

    def _register_now(self, user: str, password: str, domain: str) -> None:
        res = self.ctl("register", user, domain, password, check=False)
        if res.returncode != 0 and "already registered" not in (res.stdout + res.stderr):
            raise LocalEjabberdError(
                f"ejabberdctl register {user}@{domain} failed (rc={res.returncode}):\n{res.stdout}{res.stderr}"
            )

    def unregister(self, user: str, domain: str | None = None) -> None:
        """Delete ``user@domain`` (the account, its roster and its data)."""
        domain = domain or self.domain
        self._users.pop((user, domain), None)
        self.ctl("unregister", user, domain)

    # --------------------------------------------------------- context manager
    def __enter__(self) -> "LocalEjabberd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"LocalEjabberd(workdir={str(self.workdir)!r}, domain={self.domain!r}, "
                f"c2s_port={self.c2s_port}, component_port={self.component_port}, "
                f"api_port={self.api_port}, node={self.node!r}, pid={self.pid})")


# ----------------------------------------------------------------------- CLI
def _cmd_up(args: argparse.Namespace) -> int:
    ensure_ejabberd_installed()
    srv = LocalEjabberd(
        Path(args.dir),
        domain=args.domain,
        component_jid=args.component_jid,
        component_secret=(
            Path(args.secret_file).read_text().strip() if args.secret_file else args.secret
        ),
        c2s_port=args.c2s_port,
        component_port=args.component_port,
        api_port=args.api_port,
        dist_port=args.dist_port,
    )
    for spec in args.user:
        name, sep, password = spec.partition(":")
        if not sep or not name:
            print(f"bad --user {spec!r}, expected NAME:PASSWORD", file=sys.stderr)
            return 2
        srv.register(name, password)

    stopping = {"flag": False}

    def _on_signal(signum, _frame):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        srv.start()
        print(
            f"ejabberd running: node={srv.node} domain={srv.domain} c2s=127.0.0.1:{srv.c2s_port} "
            f"component={srv.component_jid}@127.0.0.1:{srv.component_port} api={srv.api_url} "
            f"logs={srv.logs_path}",
            flush=True,
        )
        for name, _password in (s.partition(":")[::2] for s in args.user):
            print(f"user registered: {name}@{srv.domain}", flush=True)
        while not stopping["flag"]:
            if not srv.is_running():
                print(f"ejabberd exited unexpectedly\n{srv.log_tail()}", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        print("stopping ejabberd", flush=True)
        return 0
    finally:
        srv.stop()
        print("ejabberd stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Throwaway loopback ejabberd for development/tests")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="configure and run ejabberd in the foreground, register users")
    up.add_argument("--dir", required=True, help="work folder (config, spool, logs)")
    up.add_argument("--domain", default="example.test")
    up.add_argument("--component-jid", default="presence.example.test")
    up.add_argument("--secret", default=DEFAULT_SECRET)
    up.add_argument("--secret-file", help="read the component secret from this file")
    up.add_argument("--c2s-port", type=int, default=None)
    up.add_argument("--component-port", type=int, default=None)
    up.add_argument("--api-port", type=int, default=None)
    up.add_argument("--dist-port", type=int, default=None, help="Erlang distribution port")
    up.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    args = parser.parse_args(argv)
    try:
        return {"up": _cmd_up}[args.cmd](args)
    except (LocalEjabberdError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
