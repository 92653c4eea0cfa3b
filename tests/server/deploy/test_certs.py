"""pfms-certs: the files a TLS + node-authenticated deployment needs, checked the way
TLS clients and Flower check them, plus one real TLS SuperLink."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pfms_client.procs import bin_dir, flower_env, free_port, stop_tree
from pfms_server.deploy import certs

NODES = ["NL", "ES"]


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    assert certs.main(["--out", str(out), "--supernodes", *NODES]) == 0
    return out


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def verify(certs_dir: Path, subject: x509.GeneralName, ca: x509.Certificate | None = None) -> None:
    ca = ca or load_cert(certs_dir / "ca.crt")
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
    verifier.verify(load_cert(certs_dir / "server.crt"), [])


@pytest.mark.parametrize("subject", [
    x509.DNSName("superlink"), x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
])
def test_server_cert_verifies_against_ca_for_default_hosts(certs_dir, subject):
    verify(certs_dir, subject)


def test_server_cert_rejected_for_other_name_or_other_ca(certs_dir):
    with pytest.raises(VerificationError):
        verify(certs_dir, x509.DNSName("example.org"))
    other_ca, _ = certs.make_ca()
    with pytest.raises(VerificationError):
        verify(certs_dir, x509.DNSName("superlink"), ca=other_ca)


def test_server_cert_has_exactly_the_sans_asked_for(tmp_path):
    hosts = ["fl.example.org", "10.1.2.3", "fd00::7", "superlink"]
    certs.write_all(tmp_path, hosts, [], days=30, force=False)
    san = load_cert(tmp_path / "server.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "superlink"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3"),
                                                       ipaddress.ip_address("fd00::7")]
    for host in ("fl.example.org", "superlink"):
        verify(tmp_path, x509.DNSName(host))
    assert not (tmp_path / "supernodes").exists()


def test_server_cert_is_a_tls_server_leaf_and_ca_signs_only(certs_dir):
    server, ca = load_cert(certs_dir / "server.crt"), load_cert(certs_dir / "ca.crt")
    ext = server.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.issuer == ca.subject
    ca_bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_bc.critical and ca_bc.value.ca and ca_bc.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert server.not_valid_after_utc <= ca.not_valid_after_utc


def test_days_sets_validity(tmp_path):
    certs.write_all(tmp_path, ["localhost"], [], days=10, force=False)
    cert = load_cert(tmp_path / "server.crt")
    assert 9.9 < (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400 < 10.1


def test_supernode_keys_load_as_flower_loads_them(certs_dir):
    from flwr.cli.supernode.register import try_load_public_key

    for name in NODES:
        private = load_ssh_private_key((certs_dir / "supernodes" / f"{name}.key").read_bytes(), None)
        public = load_ssh_public_key((certs_dir / "supernodes" / f"{name}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
        assert isinstance(public.curve, ec.SECP384R1)
        assert private.public_key() == public
        assert try_load_public_key(certs_dir / "supernodes" / f"{name}.pub")  # `flwr supernode register`'s check
    a, b = ((certs_dir / "supernodes" / f"{n}.pub").read_bytes() for n in NODES)
    assert a != b


def test_private_keys_are_0600_even_with_open_umask(tmp_path):
    old = os.umask(0)
    try:
        written = certs.write_all(tmp_path, ["localhost"], ["NL"], days=1, force=False)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "server.crt": 0o644, "server.key": 0o600,
                     "supernodes/NL.key": 0o600, "supernodes/NL.pub": 0o644}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(p.name for p in written)


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    (tmp_path / "supernodes").mkdir()
    (tmp_path / "supernodes" / "ES.key").write_text("keep me")
    assert certs.main(["--out", str(tmp_path), "--supernodes", "NL", "ES"]) == 2
    err = capsys.readouterr().err
    assert "ES.key" in err and "--force" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ES.key", "supernodes"]  # nothing else written
    assert (tmp_path / "supernodes" / "ES.key").read_text() == "keep me"

    assert certs.main(["--out", str(tmp_path), "--supernodes", "NL", "ES", "--force"]) == 0
    assert (tmp_path / "supernodes" / "ES.key").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE((tmp_path / "supernodes" / "ES.key").stat().st_mode) == 0o600


def test_main_prints_what_it_wrote(tmp_path, capsys):
    assert certs.main(["--out", str(tmp_path / "c"), "--supernodes", "NL"]) == 0
    out = capsys.readouterr().out
    for rel in ("ca.crt", "ca.key", "server.crt", "server.key", "supernodes/NL.key", "supernodes/NL.pub"):
        assert str(tmp_path / "c" / rel) in out


@pytest.mark.parametrize("args, message", [
    (["--supernodes", "../x"], "SuperNode name"),
    (["--supernodes", "NL", "NL"], "given twice"),
    (["--days", "0"], "--days"),
    (["--hosts", "a b"], "neither an IP address nor a DNS name"),
])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    assert certs.main(["--out", str(tmp_path / "c"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        certs.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out", "--hosts", "--supernodes", "--days", "--force"):
        assert option in out


# --- a real SuperLink serving TLS with these files ---------------------------------

@pytest.mark.slow
def test_real_superlink_serves_tls_with_these_certs(certs_dir, tmp_path):
    bindir = bin_dir()
    port = free_port()
    flwr_home = tmp_path / "flwr"
    flwr_home.mkdir()
    env = flower_env({"FLWR_HOME": str(flwr_home)})
    cmd = [str(bindir / "flower-superlink"), "--ssl-ca-certfile", str(certs_dir / "ca.crt"),
           "--ssl-certfile", str(certs_dir / "server.crt"), "--ssl-keyfile", str(certs_dir / "server.key"),
           "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation",
           "--enable-supernode-auth"]
    log = tmp_path / "superlink.log"
    url = f"https://127.0.0.1:{port}/health"
    trust_ca = ssl.create_default_context(cafile=str(certs_dir / "ca.crt"))
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"flower-superlink exited: {log.read_text()[-2000:]}"
            try:
                response = httpx.get(url, verify=trust_ca, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"no TLS answer: {log.read_text()[-2000:]}"
                time.sleep(0.3)
        assert response.status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url, timeout=5)  # system trust store only: our test CA is unknown
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)  # no plain HTTP

        # `flwr supernode register` over TLS accepts the OpenSSH public key as written.
        (flwr_home / "config.toml").write_text(
            '[superlink]\ndefault = "t"\n\n[superlink.t]\n'
            f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs_dir / "ca.crt"}"\n'
        )
        reg = subprocess.run([str(bindir / "flwr"), "supernode", "register",
                              str(certs_dir / "supernodes" / "NL.pub"), "t"],
                             env=env, capture_output=True, text=True, check=False, timeout=60)
        assert reg.returncode == 0, reg.stdout + reg.stderr
        assert "registered successfully" in reg.stdout
    finally:
        stop_tree(proc)
