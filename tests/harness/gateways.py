"""Real gateways (Caddy, nginx) running the configurations shipped in `examples/gateways/`,
and an upstream that records what reached it.

Each gateway is a process of its own on a free port of 127.0.0.1, with every file it writes
(rendered configuration, logs, pid, temporary files, Caddy's data) in a folder of its own: no
system service and no file of the system's installation is used. A gateway is ready once it
answers HTTP on its port; nothing waits for a fixed time.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import ClassVar

import httpx

from tests.harness.servers import SERVER_START_TIMEOUT, MissingServerBinaryError, free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "gateways"
CADDYFILE = EXAMPLES / "Caddyfile"
NGINX_CONF = EXAMPLES / "nginx" / "nginx.conf"
NGINX_TEMPLATE = EXAMPLES / "nginx" / "tenantry.conf.template"


def caddy_binary() -> Path:
    found = shutil.which("caddy")
    if found is None:
        raise MissingServerBinaryError(
            "caddy is not installed: run `make gateways` (installs Debian's `caddy`)"
        )
    return Path(found)


def nginx_binary() -> Path:
    """nginx, which must have the auth_request module (`nginx -V` lists its build options)."""
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
    )
    if found is None:
        raise MissingServerBinaryError(
            "nginx is not installed: run `make gateways` (installs Debian's `nginx`, which has "
            "the auth_request module)"
        )
    built = subprocess.run([found, "-V"], capture_output=True, text=True, check=False).stderr
    if "--with-http_auth_request_module" not in built:
        raise MissingServerBinaryError(
            f"{found} lacks the auth_request module: install Debian's `nginx` package "
            "(`make gateways`), whose build has it"
        )
    return Path(found)


# `${NAME}` with an upper-case name; no other use of `$` is a placeholder.
PLACEHOLDER = r"""
    \$(?:
        (?P<escaped>(?!))
      | (?P<named>(?!))
      | \{(?P<braced>[A-Z][A-Z0-9_]*)\}
      | (?P<invalid>(?!))
    )
"""


class EnvTemplate(Template):
    """`${NAME}` placeholders (upper-case names) and nothing else, as envsubst fills an nginx
    template: nginx's own `$variables` pass through untouched, and a placeholder without a
    value is an error rather than an empty string."""

    flags = re.RegexFlag(0)  # case matters: `${host}` is nginx's, `${HOST}` a placeholder
    pattern = PLACEHOLDER  # type: ignore[assignment]  # Template compiles the string


def render_nginx_template(values: Mapping[str, str], template: Path = NGINX_TEMPLATE) -> str:
    """The shipped nginx server block with its placeholders filled in; KeyError names a
    placeholder without a value."""
    return EnvTemplate(template.read_text()).substitute(values)


def wait_for_http(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = SERVER_START_TIMEOUT
) -> None:
    """Until `url` answers HTTP at all (any status: the gateway is up even if what is behind
    it says no), failing early, with the process's log, if the process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{_tail(log)}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _private_folder(prefix: str) -> Path:
    """A folder outside pytest's own (which only root may enter): nginx's worker processes
    give up root and must still reach their temporary files in here."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


@dataclass
class Gateway(ABC):
    """A gateway process in front of `upstream`, asking the check at `check` (both
    `host:port`) for every request."""

    check: str
    upstream: str
    port: int = field(default_factory=free_port)
    base_dir: Path = field(default_factory=lambda: _private_folder("tenantry-gateway-"))
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    name: ClassVar[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.base_dir / "gateway.log"

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str]]:
        """Render the configuration into `base_dir`; the command line and environment."""

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        args, env = self.command()
        with open(self.log, "ab") as output:
            self._process = subprocess.Popen(
                args,
                env=env,
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_http(self.url + "/", self._process, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to the gateway's own process group (its workers included), then SIGKILL."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


@dataclass
class CaddyGateway(Gateway):
    """`caddy run` on the shipped Caddyfile, which reads its addresses from the environment;
    Caddy's data and configuration folders (certificates, autosave) are in `base_dir`."""

    name: ClassVar[str] = "caddy"

    def command(self) -> tuple[list[str], dict[str, str]]:
        binary = caddy_binary()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base_dir),
            "XDG_DATA_HOME": str(self.base_dir / "data"),
            "XDG_CONFIG_HOME": str(self.base_dir / "config"),
            "GATEWAY_BIND": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "TENANTRY_CHECK_ADDRESS": self.check,
            "UPSTREAM_ADDRESS": self.upstream,
            "CADDY_ADMIN": "off",
        }
        args = [str(binary), "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
        return args, env


@dataclass
class NginxGateway(Gateway):
    """nginx on the shipped nginx.conf and the rendered tenantry.conf, with `base_dir` as its
    prefix (pid, logs, temporary files), in the foreground."""

    name: ClassVar[str] = "nginx"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [*self._nginx(), "-g", "daemon off;"], self._environment()

    def test_configuration(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the rendered configuration."""
        return subprocess.run(
            [*self._nginx(), "-t"],
            env=self._environment(),
            capture_output=True,
            text=True,
            check=False,
        )

    def _nginx(self) -> list[str]:
        """nginx on the configuration rendered into its prefix; startup errors on stderr
        (the error log named in nginx.conf, in the prefix, takes over once it is read)."""
        binary = nginx_binary()
        shutil.copy(NGINX_CONF, self.base_dir / "nginx.conf")
        rendered = render_nginx_template(
            {
                "GATEWAY_BIND": "127.0.0.1",
                "GATEWAY_PORT": str(self.port),
                "TENANTRY_CHECK_ADDRESS": self.check,
                "UPSTREAM_ADDRESS": self.upstream,
            }
        )
        (self.base_dir / "tenantry.conf").write_text(rendered)
        return [
            str(binary),
            "-p", f"{self.base_dir}/",
            "-c", str(self.base_dir / "nginx.conf"),
            "-e", "stderr",
        ]  # fmt: skip

    @staticmethod
    def _environment() -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


GATEWAYS: dict[str, type[Gateway]] = {"caddy": CaddyGateway, "nginx": NginxGateway}


# --- the upstream --------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenRequest:
    """A request as the upstream received it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


class RecordingUpstream:
    """An HTTP server on 127.0.0.1 standing for the product: it records every request it
    receives (method, path with query, headers, body) and answers 200 with a JSON body naming
    what it served. Threads serve the requests, so it runs beside any event loop."""

    def __init__(self) -> None:
        self._seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="recording-upstream", daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()
        with socket.create_connection(("127.0.0.1", self._server.server_port), timeout=5):
            pass

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def seen(self, path: str) -> list[SeenRequest]:
        """The requests received for exactly `path` (query included)."""
        with self._lock:
            return [request for request in self._seen if request.path == path]

    def seen_under(self, prefix: str) -> list[SeenRequest]:
        with self._lock:
            return [request for request in self._seen if request.path.startswith(prefix)]

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self._seen.append(request)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the gateways' upstream pools expect

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                upstream._record(
                    SeenRequest(self.command, self.path, tuple(self.headers.items()), body)
                )
                answer = json.dumps(
                    {
                        "served_by": "upstream",
                        "method": self.command,
                        "path": self.path,
                        "body_bytes": len(body),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: object) -> None:
                return None

        return Handler
