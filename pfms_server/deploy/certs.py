"""``pfms-certs``: every key and certificate a TLS + node-authenticated deployment needs.

One test CA signs the SuperLink's certificate (its SANs must name every address
SuperNodes and ``flwr`` use, e.g. ``superlink`` inside compose and ``localhost``
on the host). Each SuperNode gets an EC P-384 key pair in OpenSSH format: Flower
1.41 loads the private key with ``load_ssh_private_key`` (``flower-supernode
--auth-supernode-private-key``) and ``flwr supernode register`` wants the public
key as an OpenSSH NIST-curve EC key. Made with ``cryptography`` (a Flower
dependency), so no openssl binary is needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "superlink")
DEFAULT_SUPERNODES = ("NL", "ES", "FR", "US")
DEFAULT_DAYS = 365
CURVE = ec.SECP384R1  # a NIST curve, as `flwr supernode register` requires
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
# The clocks of the machines in a deployment rarely agree to the second.
_BACKDATE = dt.timedelta(minutes=5)
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

PrivateKey = ec.EllipticCurvePrivateKey


class CertsError(ValueError):
    """A bad argument or a file that would be overwritten; the message says which."""


def _new_key() -> PrivateKey:
    return ec.generate_private_key(CURVE())


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise CertsError(f"--days must be >= 1, got {days}")
    now = dt.datetime.now(dt.UTC)
    return now - _BACKDATE, now + dt.timedelta(days=days)


def san_entry(host: str) -> x509.GeneralName:
    """An IP SAN for an address, a DNS SAN for a name (TLS clients check them differently)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.strip().lower()
    if not name or any(c.isspace() or c in "/:@" for c in name):
        raise CertsError(f"host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def make_ca(common_name: str = "pfms test CA", days: int = DEFAULT_DAYS) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA384())
    )
    return cert, key


def make_server_cert(
    ca_cert: x509.Certificate, ca_key: PrivateKey, hosts: Sequence[str], days: int = DEFAULT_DAYS
) -> tuple[x509.Certificate, PrivateKey]:
    """The SuperLink's TLS server certificate, valid for every name/address in ``hosts``."""
    if not hosts:
        raise CertsError("at least one --hosts entry is needed")
    sans = list(dict.fromkeys(san_entry(h) for h in hosts))  # dedupe, keep order
    key = _new_key()
    not_before, not_after = _validity(days)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(hosts[0]))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return cert, key


def make_supernode_key(name: str = "supernode") -> tuple[bytes, bytes]:
    """(OpenSSH private key, OpenSSH public key line) of a new EC P-384 node key."""
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" pfms-supernode-{name}\n".encode()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: what uvicorn's and gRPC's TLS loaders take."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def check_supernode_names(names: Iterable[str]) -> list[str]:
    """Names become file names: no paths, no duplicates."""
    out = list(names)
    for name in out:
        if not _NODE_NAME.match(name):
            raise CertsError(f"SuperNode name {name!r}: use letters, digits, '.', '_' or '-' only")
    if dups := sorted({n for n in out if out.count(n) > 1}):
        raise CertsError(f"SuperNode name(s) given twice: {', '.join(dups)}")
    return out


def planned_files(out: Path, supernodes: Sequence[str]) -> list[Path]:
    files = [out / f for f in ("ca.crt", "ca.key", "server.crt", "server.key")]
    for name in supernodes:
        files += [out / "supernodes" / f"{name}.key", out / "supernodes" / f"{name}.pub"]
    return files


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write; the temp file is 0600 from the start, so a key is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_all(
    out: str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    supernodes: Sequence[str] = DEFAULT_SUPERNODES,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> list[Path]:
    """Create CA, server certificate and SuperNode keys under ``out``; returns the files written.

    Without ``force`` nothing is written if any target exists (all-or-nothing,
    so a half-replaced set can't leave a CA that no longer matches its certs).
    """
    out = Path(out)
    names = check_supernode_names(supernodes)
    targets = planned_files(out, names)
    if not force and (existing := [str(p) for p in targets if p.exists() or p.is_symlink()]):
        raise CertsError(f"refusing to overwrite {', '.join(existing)} (pass --force to replace them)")
    ca_cert, ca_key = make_ca(days=days)
    server_cert, server_key = make_server_cert(ca_cert, ca_key, hosts, days)
    contents: dict[Path, tuple[bytes, int]] = {
        out / "ca.crt": (cert_pem(ca_cert), PUBLIC_MODE),
        out / "ca.key": (key_pem(ca_key), PRIVATE_MODE),
        out / "server.crt": (cert_pem(server_cert), PUBLIC_MODE),
        out / "server.key": (key_pem(server_key), PRIVATE_MODE),
    }
    for name in names:
        private, public = make_supernode_key(name)
        contents[out / "supernodes" / f"{name}.key"] = (private, PRIVATE_MODE)
        contents[out / "supernodes" / f"{name}.pub"] = (public, PUBLIC_MODE)
    for path, (data, mode) in contents.items():
        _write(path, data, mode)
    return list(contents)


_ROLE = {
    "ca.crt": "CA certificate: give to every SuperNode and to `flwr` (root-certificates)",
    "ca.key": "CA private key: keep offline, it signs server certificates",
    "server.crt": "SuperLink certificate (--ssl-certfile)",
    "server.key": "SuperLink private key (--ssl-keyfile)",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pfms-certs",
        description="Create a test CA, the SuperLink's TLS certificate and one authentication key pair "
        "per SuperNode, for a TLS + node-authenticated pfms deployment.",
    )
    p.add_argument("--out", required=True, help="folder to write into (created if missing)")
    p.add_argument("--hosts", nargs="+", default=list(DEFAULT_HOSTS), metavar="HOST",
                   help="names and IP addresses the SuperLink is reached at; each becomes a DNS or IP "
                   f"subjectAltName of server.crt (default: {' '.join(DEFAULT_HOSTS)}; "
                   "'superlink' is the compose service name)")
    p.add_argument("--supernodes", nargs="*", default=list(DEFAULT_SUPERNODES), metavar="NAME",
                   help="one EC P-384 OpenSSH key pair per name: supernodes/NAME.key (for "
                   "`flower-supernode --auth-supernode-private-key`) and supernodes/NAME.pub (for "
                   f"`flwr supernode register`) (default: {' '.join(DEFAULT_SUPERNODES)})")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS,
                   help=f"validity of the CA and server certificates in days (default: {DEFAULT_DAYS})")
    p.add_argument("--force", action="store_true",
                   help="replace existing files; without it nothing is written if any target exists "
                   "(exit code 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        written = write_all(args.out, args.hosts, args.supernodes, args.days, args.force)
    except CertsError as exc:
        print(f"pfms-certs: {exc}", file=sys.stderr)
        return 2
    for path in written:
        role = _ROLE.get(path.name) or (
            "SuperNode private key (--auth-supernode-private-key), mode 600" if path.suffix == ".key"
            else "SuperNode public key (`flwr supernode register`)"
        )
        print(f"wrote {path}  {role}")
    print(f"server.crt is valid for: {' '.join(args.hosts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
