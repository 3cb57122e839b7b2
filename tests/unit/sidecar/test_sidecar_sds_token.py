"""`certs.sds.token_file`: optional default path, required explicit path, re-read per connect, Bearer metadata."""

from __future__ import annotations

import pytest

from secmesh.errors import ConfigError
from secmesh.sidecar import config as sconfig
from secmesh.sidecar.config import DEFAULT_TOKEN_FILE, SdsConfig
from secmesh.sidecar.sds_client import bearer_metadata

LISTENER = 'listeners: [{name: in, address: "127.0.0.1:0", upstream: "127.0.0.1:1", allow_all: true}]\n'


def test_default_path_is_optional_and_empty_disables():
    assert SdsConfig().token_file == DEFAULT_TOKEN_FILE
    assert bearer_metadata(SdsConfig(token_file="")) == ()
    assert bearer_metadata(SdsConfig(token_file=DEFAULT_TOKEN_FILE)) == () or \
        bearer_metadata(SdsConfig())[0][0] == "authorization"   # a host that really has the file


def test_token_is_reread_and_sent_as_bearer(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("aaa.bbb.ccc\n")
    cfg = SdsConfig(token_file=str(tok))
    assert bearer_metadata(cfg) == (("authorization", "Bearer aaa.bbb.ccc"),)
    tok.write_text("ddd.eee.fff")
    assert bearer_metadata(cfg) == (("authorization", "Bearer ddd.eee.fff"),)


def test_an_unreadable_token_never_appears_in_the_error(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("")
    with pytest.raises(OSError, match="empty"):
        bearer_metadata(SdsConfig(token_file=str(tok)))
    tok.unlink()
    with pytest.raises(OSError) as err:
        bearer_metadata(SdsConfig(token_file=str(tok)))
    assert str(tok) in str(err.value)


def test_an_explicit_missing_token_file_is_a_start_up_error(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"certs: {{sds: {{token_file: {tmp_path}/nope}}}}\n" + LISTENER)
    with pytest.raises(ConfigError, match="token_file"):
        sconfig.load(path)
    (tmp_path / "nope").write_text("x.y.z")
    assert sconfig.load(path).certs.sds.token_file == f"{tmp_path}/nope"
    path.write_text('certs: {sds: {token_file: ""}}\n' + LISTENER)
    assert sconfig.load(path).certs.sds.token_path() is None
