"""A real Dovecot IMAP server for tests, one per test, in its own temporary directory.

Debian's ``dovecot-imapd`` runs fine as an ordinary foreground process (``dovecot -F -c conf``)
with everything — config, sockets, state, log, maildirs — under one temp dir and a free port,
so tests stay parallel-safe under pytest-xdist. As root, Dovecot insists on dropping privileges
for its login and mail processes, so they run as ``nobody`` and the tree is made readable and
writable for that user; as any other user everything simply runs as that user.

The temp dir lives directly under the system temp dir (not pytest's ``tmp_path``): pytest's
directories are mode 0700 and owned by root, which ``nobody`` could not enter, and Dovecot's
unix sockets need a short path (108 bytes).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from imapclient import IMAPClient

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "alice", "secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _identity() -> tuple[str, str]:
    """(user, group) the login and mail processes run as."""
    if os.geteuid() == 0:
        return "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


class Dovecot:
    """One Dovecot instance; ``start()``/``stop()`` may be repeated (same port, same mail)."""

    def __init__(
        self, *, extra_config: str = "", tls: bool = False, oauth2_introspection_url: str = ""
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mi-dc-"))
        self.root.chmod(0o755)
        self.port = _free_port()
        self.tls_port = _free_port() if tls else 0  # implicit TLS ("imaps"); STARTTLS on ``port``
        self.host = "127.0.0.1"
        self.user, self.password = USER, PASSWORD
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls = tls
        self.oauth2_introspection_url = oauth2_introspection_url
        self._write_config(extra_config)

    # -- server lifecycle ---------------------------------------------------------------------

    def _write_config(self, extra: str) -> None:
        user, group = _identity()
        mail = self.root / "mail"
        for sub in ("base", "state", "mail"):
            (self.root / sub).mkdir()
        mail.chmod(0o777)  # the mail processes (nobody when we are root) create the maildirs
        (self.root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        ssl_conf = "ssl = no"
        if self.tls:
            cert, key = self.root / "cert.pem", self.root / "key.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                check=True, capture_output=True,
            )  # fmt: skip
            ssl_conf = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"
        oauth2_conf = ""
        if self.oauth2_introspection_url:
            oauth2_conf = self._oauth2_passdb()
        self.config_path = self.root / "dovecot.conf"
        self.config_path.write_text(
            f"""
protocols = imap
listen = 127.0.0.1
base_dir = {self.root}/base
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
{ssl_conf}
disable_plaintext_auth = no
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
mail_location = maildir:{mail}/%u
{oauth2_conf}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/users
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = {self.tls_port}
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
verbose_proctitle = yes
auth_failure_delay = 0
{extra}
"""
        )

    def _oauth2_passdb(self) -> str:
        """XOAUTH2/OAUTHBEARER checked by Dovecot's oauth2 passdb, which POSTs each bearer token
        to ``oauth2_introspection_url`` (RFC 7662 style: ``token=...``) and accepts it when the
        JSON answer has ``"active": true`` and ``"username"`` equal to the login name. The
        passwd-file passdb stays for PLAIN, so the helper client below still logs in by password."""
        ext = self.root / "dovecot-oauth2.conf.ext"
        ext.write_text(
            f"introspection_mode = post\n"
            f"introspection_url = {self.oauth2_introspection_url}\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
            "timeout_msecs = 5000\n"
        )
        ext.chmod(0o644)
        return f"""auth_mechanisms = plain xoauth2 oauthbearer
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {ext}
}}"""

    def start(self, timeout: float = 15.0) -> None:
        log = open(self.root / "stdout.log", "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config_path)], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"dovecot did not listen on port {self.port}:\n{self.log()}")

    def stop(self) -> None:
        """Stop the whole instance and wait until it is gone (else a restart finds it "already
        running"). The master alone is not enough: on SIGTERM it exits and leaves its log and
        stats processes and every open IMAP session running, so the process group is ended."""
        if self.proc is None or self.proc.poll() is not None:
            return
        group = self.proc.pid  # start_new_session: the master leads its own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _group_members(group) and time.monotonic() < deadline:
            self.proc.poll()  # reap the master as soon as it exits
            time.sleep(0.02)
        if _group_members(group):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def idling(self) -> int:
        """How many sessions are in IDLE now, from Dovecot's process titles ("[alice 127.0.0.1 IDLE]").

        Lets a test deliver mail exactly when a client waits in IDLE: Dovecot 2.3 holds back the
        news of mail that arrived just before IDLE began until its next output."""
        assert self.proc is not None
        count = 0
        for pid in _group_members(self.proc.pid):
            with contextlib.suppress(OSError):
                count += b" IDLE]" in Path(f"/proc/{pid}/cmdline").read_bytes()
        return count

    def log(self) -> str:
        texts = [p.read_text(errors="replace") for p in (self.root / "dovecot.log", self.root / "stdout.log")
                 if p.exists()]  # fmt: skip
        return "\n".join(texts)[-4000:]

    # -- a second client, to arrange and inspect mailboxes ------------------------------------

    @contextlib.contextmanager
    def client(self, folder: str | None = None) -> Iterator[IMAPClient]:
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            imap = IMAPClient(self.host, self.port, ssl=False, timeout=10)
            imap.starttls(context)
        else:
            imap = IMAPClient(self.host, self.port, ssl=False, timeout=10)
        try:
            imap.login(self.user, self.password)
            if folder is not None:
                imap.select_folder(folder)
            yield imap
        finally:
            with contextlib.suppress(Exception):  # the server may already be gone
                imap.logout()

    def create(self, folder: str) -> None:
        with self.client() as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)

    def delete(self, folder: str) -> None:
        with self.client() as imap:
            imap.delete_folder(folder)

    def append(self, folder: str, raw: bytes, flags: tuple[bytes, ...] = ()) -> int:
        """APPEND a message; returns its UID (Dovecot answers APPENDUID)."""
        self.create(folder)
        with self.client() as imap:
            answer = imap.append(folder, raw, flags=flags)
        return int(answer.split(b"]")[0].split()[-1])

    def list(self, folder: str) -> list[int]:
        """UIDs in the folder, including any flagged \\Deleted ([] when it does not exist)."""
        with self.client() as imap:
            if not imap.folder_exists(folder):
                return []
            imap.select_folder(folder, readonly=True)
            return sorted(imap.search("ALL"))

    def flags(self, folder: str) -> dict[int, set[str]]:
        """Flags by UID, as strings (``\\Seen``, ``$Processed``)."""
        with self.client() as imap:
            imap.select_folder(folder, readonly=True)
            got = imap.get_flags(imap.search("ALL"))
        return {uid: {f.decode() for f in fl} for uid, fl in got.items()}

    def uidvalidity(self, folder: str) -> int:
        with self.client() as imap:
            return int(imap.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])


class HoldingProxy:
    """A loopback TCP forwarder in front of a server that can swallow one client command.

    Once a chunk from a client contains ``hold`` (e.g. ``b" MOVE "``), that chunk and everything
    after it from that client are never forwarded and ``held`` is set: the client waits for an
    answer that never comes — a way to crash a client at an exact point of its conversation.
    Setting ``hold = None`` makes later traffic pass through untouched."""

    def __init__(self, target_port: int, hold: bytes | None) -> None:
        self.target_port = target_port
        self.hold = hold
        self.held = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                return
            server.settimeout(None)
            self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self.hold is not None and self.hold in data:
                    self.held.set()
                    return
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            return

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
