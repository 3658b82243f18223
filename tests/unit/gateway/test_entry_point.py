"""`python -m appliance.gateway`: argument parsing, --check, generate-cert, and the site certificate."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from appliance.gateway.__main__ import main
from appliance.gateway.certs import CertificateError, generate_self_signed
from tests.unit.gateway.conftest import Site


def write_config(site: Site, **sections: object) -> Path:
    path = site.root / "gateway.yaml"
    path.write_text(yaml.safe_dump(site.config_dict(**sections)))
    return path


def test_generate_cert_then_check(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(site)
    assert (
        main(
            [
                "generate-cert",
                "--config",
                str(config),
                "--name",
                "gw.site.test",
                "--name",
                "10.0.0.5",
            ]
        )
        == 0
    )
    key, cert = site.root / "tls.key", site.root / "tls.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gw.site.test"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    # a second run leaves the pair alone
    before = cert.read_bytes()
    assert main(["generate-cert", "--config", str(config), "--name", "other"]) == 0
    assert cert.read_bytes() == before
    assert "already present" in capsys.readouterr().out
    assert main(["--config", str(config), "--check"]) == 0
    assert "ok (1 signing key(s) from file" in capsys.readouterr().out


def test_check_refuses(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(site)
    assert main(["--config", str(config), "--check"]) == 2
    assert "TLS file missing" in capsys.readouterr().err
    generate_self_signed(site.root / "tls.crt", site.root / "tls.key", ["localhost"])
    (site.root / "tls.key").chmod(0o644)
    assert main(["--config", str(config), "--check"]) == 2
    assert "readable by everyone" in capsys.readouterr().err
    (site.root / "tls.key").chmod(0o600)
    site.jwks_file.write_text(json.dumps({"keys": []}))
    assert main(["--config", str(config), "--check"]) == 2
    assert "signing keys: the key set (0 keys) holds no signature key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --config FILE once"),
        (["--config"], "--config needs a value"),
        (["--config", "a", "--config", "b"], "give --config FILE once"),
        (["--config", "a", "--bogus"], "unknown argument '--bogus'"),
        (["frobnicate", "--config", "a"], "unknown command 'frobnicate'"),
        (["--config", "a", "--name", "x"], "--name and --days belong to generate-cert"),
        (["generate-cert", "--config", "a", "--check"], "unknown argument '--check'"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "python -m appliance.gateway --config FILE" in err


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["generate-cert", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "python -m appliance.gateway --config FILE --check" in out and "generate-cert" in out


def test_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("schema_version: 1\n")
    assert main(["--config", str(path), "--check"]) == 2
    assert "missing required key `tls`" in capsys.readouterr().err


def test_certificate_refusals(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    with pytest.raises(CertificateError, match="at least one name"):
        generate_self_signed(cert, key, [])
    with pytest.raises(CertificateError, match="neither a host name nor an IP"):
        generate_self_signed(cert, key, ["https://gw"])
    with pytest.raises(CertificateError, match="validity must be 1 to 3650 days"):
        generate_self_signed(cert, key, ["gw"], days=0)
    key.write_text("a site key")
    with pytest.raises(CertificateError, match="exists without its pair; refusing to overwrite"):
        generate_self_signed(cert, key, ["gw"])
    assert key.read_text() == "a site key" and not cert.exists()
