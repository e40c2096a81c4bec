"""Local mode's gateway certificate: PEM files named by ``grpcmesh up --ingress-tls-cert``.

``GatewayTlsFiles.read`` loads and checks them (``mesh.gateway_tls.GatewayCertificate``);
the control plane reads them at start (a bad file stops it, naming the file) and again on
every poll, so a renewed certificate is served to the ingress Envoy without a restart. A
changed file that does not check out is a problem in ``/status`` and the last good
certificate stays. The files are only read: they stay where the user keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grpcmesh_control.mesh.gateway_tls import GatewayCertificate, GatewayTlsError

__all__ = ["GatewayTlsFiles"]


@dataclass(frozen=True)
class GatewayTlsFiles:
    """Where the ingress's server certificate chain (leaf first), its key and, for client
    certificates from outside, the CAs they must chain to are (PEM)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def argv(self) -> tuple[str, ...]:
        """The ``grpcmesh control-plane`` options naming these files."""
        client = () if self.client_ca is None else ("--ingress-client-ca", str(self.client_ca))
        return ("--ingress-tls-cert", str(self.cert), "--ingress-tls-key", str(self.key), *client)

    def resolved(self) -> GatewayTlsFiles:
        """The same files by absolute path (the control plane runs in the run directory)."""
        client = None if self.client_ca is None else self.client_ca.resolve()
        return GatewayTlsFiles(self.cert.resolve(), self.key.resolve(), client)

    def contents(self) -> tuple[bytes, bytes, bytes | None]:
        """The files' bytes (unchecked); ``GatewayTlsError`` naming a file that cannot be read."""
        client = None if self.client_ca is None else _read(self.client_ca)
        return _read(self.cert), _read(self.key), client

    def check(self, contents: tuple[bytes, bytes, bytes | None]) -> GatewayCertificate:
        """The certificate ``contents`` hold; ``GatewayTlsError`` naming the file otherwise."""
        names = (str(self.cert), str(self.key), str(self.client_ca))
        return GatewayCertificate.from_pem(*contents, names=names)

    def read(self) -> GatewayCertificate:
        """The certificate the files hold, checked."""
        return self.check(self.contents())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GatewayTlsError(f"{path}: {exc.strerror or exc}") from None
