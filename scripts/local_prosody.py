#!/usr/bin/env python3
"""Throwaway, loopback-only Prosody 0.12 for development and tests.

Stdlib only (Python 3.11).  Usable as a module::

    from local_prosody import LocalProsody
    with LocalProsody(Path(tmp)) as srv:      # writes config + starts
        srv.register("alice", "secret")
        ...  # connect to 127.0.0.1:srv.c2s_port / srv.component_port

and as a CLI::

    python scripts/local_prosody.py install
    python scripts/local_prosody.py up --dir /tmp/xmpp --user alice:pw --user bob:pw

The server listens on 127.0.0.1 only, has s2s/http/posix disabled, no TLS
requirement (plaintext SASL PLAIN allowed) and loads mod_privilege
(urn:xmpp:privilege:2, from the Debian ``prosody-modules`` package) so that the
external component can be granted roster (both) and outgoing-message
privileges.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from loopback import forget_at_exit, free_port, port_open, stop_at_exit

__all__ = [
    "LocalProsody",
    "LocalProsodyError",
    "ensure_prosody_installed",
    "free_port",
    "MOD_PRIVILEGE_PATH",
    "PROSODY_MODULES_DIR",
]

PROSODY_MODULES_DIR = "/usr/lib/prosody/modules"
MOD_PRIVILEGE_PATH = PROSODY_MODULES_DIR + "/mod_privilege/mod_privilege.lua"
INSTALL_SCRIPT = Path(__file__).resolve().parent / "install-prosody.sh"
DEFAULT_SECRET = "local-component-secret"


class LocalProsodyError(RuntimeError):
    """Prosody could not be installed, configured, started or driven."""


def _log(msg: str) -> None:
    print(f"[local_prosody] {msg}", file=sys.stderr, flush=True)


def _prosody_missing() -> list[str]:
    missing = []
    if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
        missing.append("prosody")
    if not os.path.isfile(MOD_PRIVILEGE_PATH):
        missing.append("prosody-modules")
    return missing


def ensure_prosody_installed() -> None:
    """Run scripts/install-prosody.sh when prosody or prosody-modules is missing (root,
    or sudo, needed then; the packaged service is kept from starting). No-op (and
    silent) when both are present."""
    missing = _prosody_missing()
    if not missing:
        return
    _log(f"missing {', '.join(missing)}: running {INSTALL_SCRIPT}")
    try:
        subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True)
    except subprocess.CalledProcessError as exc:
        raise LocalProsodyError(f"{INSTALL_SCRIPT} failed (exit status {exc.returncode})") from exc
    still = _prosody_missing()
    if still:
        raise LocalProsodyError(f"still missing after {INSTALL_SCRIPT}: {', '.join(still)}")


def _lua_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LocalProsody:
    """A Prosody instance confined to ``workdir`` and 127.0.0.1."""

    def __init__(
        self,
        workdir: Path,
        domain: str = "example.test",
        component_jid: str = "presence.example.test",
        component_secret: str = DEFAULT_SECRET,
        c2s_port: int | None = None,
        component_port: int | None = None,
        grant_roster: bool = True,
        extra_domains: tuple[str, ...] = (),
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        """`certificate` (a PEM certificate and its key, valid for the domains) turns
        on STARTTLS for c2s (mod_tls); encryption stays optional."""
        self.workdir = Path(workdir).resolve()
        self.certificate = certificate
        self.domain = domain
        # More VirtualHosts, each granting the component the same privileges.
        self.extra_domains = tuple(extra_domains)
        self.component_jid = component_jid
        self.component_secret = component_secret
        self.c2s_port = c2s_port if c2s_port is not None else free_port()
        self.component_port = component_port if component_port is not None else free_port()
        while self.component_port == self.c2s_port:
            self.component_port = free_port()
        self.grant_roster = grant_roster
        self.data_path = self.workdir / "data"
        self.certs_path = self.workdir / "certs"
        self.config_path = self.workdir / "prosody.cfg.lua"
        self.log_path = self.workdir / "prosody.log"
        self.stderr_path = self.workdir / "prosody.stderr"
        self.pid_path = self.workdir / "prosody.pid"
        self._proc: subprocess.Popen | None = None
        self._stderr_fh = None

    # ------------------------------------------------------------------ config
    def config_text(self) -> str:
        if self.grant_roster:
            # roster "both": the service reads an item before changing one direction;
            # presence "managed_entity": it sees users come online (roster checks).
            privileged = (
                "privileged_entities = {\n"
                f"    [{_lua_str(self.component_jid)}] = {{ roster = \"both\"; message = \"outgoing\";"
                " presence = \"managed_entity\" };\n"
                "}\n"
            )
        else:
            privileged = "-- no privileged_entities: the component gets no privilege\n"
        hosts = "".join(
            f"VirtualHost {_lua_str(domain)}\n{privileged}\n"
            for domain in (self.domain, *self.extra_domains)
        )
        return f"""-- Generated by scripts/local_prosody.py; overwritten on every start.
run_as_root = true
pidfile = {_lua_str(str(self.pid_path))}
data_path = {_lua_str(str(self.data_path))}
certificates = {_lua_str(str(self.certs_path))}
plugin_paths = {{ {_lua_str(PROSODY_MODULES_DIR)} }}

interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ {self.component_port} }}
component_interfaces = {{ "127.0.0.1" }}
http_ports = {{ }}
https_ports = {{ }}
http_interfaces = {{ "127.0.0.1" }}
https_interfaces = {{ "127.0.0.1" }}

c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
allow_registration = false

modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "privilege";{' "tls";' if self.certificate else ''} }}
modules_disabled = {{ "s2s"; "posix" }}

log = {{
    debug = {_lua_str(str(self.log_path))};
    error = "*stderr";
}}

{hosts}Component {_lua_str(self.component_jid)}
    component_secret = {_lua_str(self.component_secret)}
    modules_enabled = {{ "privilege" }}
"""

    def write_config(self) -> Path:
        """(Re)write the config and prepare the folders.  Idempotent."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_path.mkdir(parents=True, exist_ok=True)
        self.certs_path.mkdir(parents=True, exist_ok=True)
        # The config holds the component secret and the data folder the accounts: for their
        # owner only. Prosody and prosodyctl both run as that owner here (`run_as_root`
        # keeps prosodyctl from switching to the `prosody` user as root).
        for p in (self.workdir, self.data_path, self.certs_path):
            os.chmod(p, 0o700)
        if self.certificate is not None:
            # Prosody finds certs/<domain>.crt and .key by itself (certmanager).
            crt, key = self.certificate
            for domain in (self.domain, *self.extra_domains):
                shutil.copyfile(crt, self.certs_path / f"{domain}.crt")
                shutil.copyfile(key, self.certs_path / f"{domain}.key")
                os.chmod(self.certs_path / f"{domain}.key", 0o600)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.config_text())
        os.chmod(tmp, 0o600)
        tmp.replace(self.config_path)
        return self.config_path

    # --------------------------------------------------------------- lifecycle
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in (self.log_path, self.stderr_path):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"--- {path} (last {lines} lines) ---")
            out.extend(text[-lines:])
        return "\n".join(out)

    def start(self, timeout: float = 20) -> "LocalProsody":
        """Write the config, spawn ``prosody -F`` and wait for both ports."""
        if self.is_running():
            return self
        if shutil.which("prosody") is None:
            raise LocalProsodyError("prosody is not installed (see ensure_prosody_installed())")
        for port in (self.c2s_port, self.component_port):
            if port_open(port):
                raise LocalProsodyError(f"port 127.0.0.1:{port} is already in use")
        self.write_config()
        try:
            self.pid_path.unlink()
        except FileNotFoundError:
            pass
        self._stderr_fh = open(self.stderr_path, "ab")
        self._proc = subprocess.Popen(
            ["prosody", "--config", str(self.config_path), "-F"],
            cwd=str(self.workdir),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr_fh,
            stderr=self._stderr_fh,
            start_new_session=True,  # own process group: stop() kills it all
        )
        stop_at_exit(self)
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._cleanup_handles()
                self._proc = None
                raise LocalProsodyError(f"prosody exited with code {rc} during startup\n{self.log_tail()}")
            if port_open(self.c2s_port) and port_open(self.component_port):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise LocalProsodyError(f"prosody did not open its ports within {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``.  Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self._proc = None
        self._cleanup_handles()
        forget_at_exit(self)

    def restart(self, timeout: float = 20) -> "LocalProsody":
        self.stop()
        return self.start(timeout=timeout)

    def _cleanup_handles(self) -> None:
        if self._stderr_fh is not None:
            self._stderr_fh.close()
            self._stderr_fh = None

    # ------------------------------------------------------------------- users
    def register(self, user: str, password: str, domain: str | None = None) -> None:
        """Create (or reset the password of) ``user@domain`` (default: the main
        domain).  Works whether or not the server is running (prosodyctl writes the
        data store directly)."""
        if not self.config_path.exists():
            self.write_config()
        domain = domain or self.domain
        res = subprocess.run(
            ["prosodyctl", "--config", str(self.config_path), "register", user, domain, password],
            cwd=str(self.workdir),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0:
            raise LocalProsodyError(
                f"prosodyctl register {user}@{domain} failed (rc={res.returncode}):\n"
                f"{res.stdout}{res.stderr}"
            )

    def unregister(self, user: str, domain: str | None = None) -> None:
        """Delete ``user@domain`` (the account, its roster and its data)."""
        domain = domain or self.domain
        res = subprocess.run(
            ["prosodyctl", "--config", str(self.config_path), "deluser", f"{user}@{domain}"],
            cwd=str(self.workdir), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        if res.returncode != 0:
            raise LocalProsodyError(
                f"prosodyctl deluser {user}@{domain} failed (rc={res.returncode}):\n{res.stdout}{res.stderr}"
            )

    # --------------------------------------------------------- context manager
    def __enter__(self) -> "LocalProsody":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"LocalProsody(workdir={str(self.workdir)!r}, domain={self.domain!r}, "
                f"c2s_port={self.c2s_port}, component_port={self.component_port}, pid={self.pid})")


# ----------------------------------------------------------------------- CLI
def _cmd_install(_args: argparse.Namespace) -> int:
    ensure_prosody_installed()
    print("prosody and prosody-modules are installed")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    ensure_prosody_installed()
    print("prosody installed: ok", flush=True)
    srv = LocalProsody(
        Path(args.dir),
        domain=args.domain,
        component_jid=args.component_jid,
        component_secret=(
            Path(args.secret_file).read_text().strip() if args.secret_file else args.secret
        ),
        c2s_port=args.c2s_port,
        component_port=args.component_port,
        grant_roster=not args.no_privilege,
    )
    print(f"config written: {srv.write_config()}", flush=True)
    for spec in args.user:
        name, sep, password = spec.partition(":")
        if not sep or not name:
            print(f"bad --user {spec!r}, expected NAME:PASSWORD", file=sys.stderr)
            return 2
        srv.register(name, password)
        print(f"user registered: {name}@{srv.domain}", flush=True)

    stopping = {"flag": False}

    def _on_signal(signum, _frame):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        srv.start()
        print(
            f"prosody running: pid={srv.pid} domain={srv.domain} "
            f"c2s=127.0.0.1:{srv.c2s_port} component={srv.component_jid}@127.0.0.1:{srv.component_port} "
            f"log={srv.log_path}",
            flush=True,
        )
        while not stopping["flag"]:
            if not srv.is_running():
                print(f"prosody exited unexpectedly\n{srv.log_tail()}", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        print("stopping prosody", flush=True)
        return 0
    finally:
        srv.stop()
        print("prosody stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Throwaway loopback Prosody for development/tests")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="install prosody + prosody-modules via apt if missing")
    up = sub.add_parser("up", help="configure, register users and run Prosody in the foreground")
    up.add_argument("--dir", required=True, help="work folder (config, data, log)")
    up.add_argument("--domain", default="example.test")
    up.add_argument("--component-jid", default="presence.example.test")
    up.add_argument("--secret", default=DEFAULT_SECRET)
    up.add_argument("--secret-file", help="read the component secret from this file"
                    " (keeps it out of the process list)")
    up.add_argument("--c2s-port", type=int, default=None)
    up.add_argument("--component-port", type=int, default=None)
    up.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    up.add_argument("--no-privilege", action="store_true",
                    help="do not grant the component any privilege (privileged_entities omitted)")
    args = parser.parse_args(argv)
    try:
        return {"install": _cmd_install, "up": _cmd_up}[args.cmd](args)
    except (LocalProsodyError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
