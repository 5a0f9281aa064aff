"""kvraft.config is the one place for settings and defaults; ``kvraft serve`` uses it."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from kvraft import cli
from kvraft.config import (
    SERVE_KEYS,
    SERVE_SETTINGS,
    LocalClusterSettings,
    NodeSettings,
    SettingError,
    settings_from,
    unknown_keys,
)
from kvraft.local import up
from kvraft.runtime.node import NodeConfig

README = Path(__file__).resolve().parent.parent / "README.md"
REQUIRED = ["--id", "1", "--listen", "127.0.0.1:7001", "--data-dir", "d", "--group", "0",
            "--insecure"]
# No environment variable of the developer's shell may leak into the options.
CLEAN_ENV: dict[str, str | None] = {s.envvar: None for s in SERVE_SETTINGS if s.envvar}
CLEAN_ENV["KVRAFT_SECRET"] = "s"  # (a secret is never taken from the command line)


def _serve(monkeypatch: pytest.MonkeyPatch, *args: str, secret_env: str | None = "s"
           ) -> tuple[Result, list[NodeConfig]]:
    """Run ``kvraft serve ARGS`` up to the point where it would start the node."""
    captured: list[NodeConfig] = []
    monkeypatch.setattr(cli, "start_node", lambda cfg, log_level: captured.append(cfg))
    result = CliRunner().invoke(cli.main, ["serve", *args],
                                env={**CLEAN_ENV, "KVRAFT_SECRET": secret_env})
    return result, captured


def _option(command: click.Command, name: str) -> click.Option:
    opt = next(p for p in command.params if p.name == name)
    assert isinstance(opt, click.Option)
    return opt


def test_serve_defaults_are_the_config_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    result, [cfg] = _serve(monkeypatch, *REQUIRED)
    assert result.exit_code == 0, result.output
    assert cfg.settings == NodeSettings()
    assert (cfg.node_id, cfg.listen, cfg.groups, cfg.secret) == (1, "127.0.0.1:7001", (0,), "s")
    # Every setting is an option that defaults to "not given", and --help shows the
    # module's default (read from the settings field, not restated).
    for s in SERVE_SETTINGS:
        opt = _option(cli.serve, s.key)
        assert opt.opts == [s.option] and opt.default is None
        shown = s.shown_default()
        assert shown is None or f"default: {shown}" in (opt.help or ""), (s.key, opt.help)
    assert "[default: 50; >= 1]" in " ".join(
        CliRunner().invoke(cli.main, ["serve", "--help"]).output.split())


def test_up_defaults_are_the_config_modules() -> None:
    d = LocalClusterSettings()
    for f in dataclasses.fields(LocalClusterSettings):
        if f.name != "host":
            assert _option(up, f.name).default == getattr(d, f.name)
    assert cli.DEFAULT_ADDRS == "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"


def test_every_setting_has_a_default_and_a_description() -> None:
    def walk(cls: type) -> None:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.default_factory is not dataclasses.MISSING:
                walk(type(getattr(cls(), f.name)))
            else:
                assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no description"
    walk(NodeSettings)
    walk(LocalClusterSettings)


def test_readme_keys_are_accepted() -> None:
    block = re.search(r"## Configuration.*?```toml\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    doc = tomllib.loads(block.group(1))
    assert unknown_keys(doc) == []
    mentioned = {"s3_prefix", "s3_endpoint_url", "s3_region", "backup_interval_s",
                 "backup_keep"}  # named in the block's comments
    assert mentioned <= SERVE_KEYS


def test_file_overrides_defaults_and_option_overrides_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('id = 2\nlisten = "127.0.0.1:7002"\ndata_dir = "d2"\nsecret = "f"\n'
                    "insecure = true\ngroups = [0, 1]\ntick_ms = 30\nsnapshot_entries = 7\n"
                    'cluster_name = "prod"\nbackup_interval_s = 60\nmax_sessions = 10\n'
                    'shard_chunk_bytes = 4096\n[peers]\n1 = "127.0.0.1:7001"\n')
    result, [cfg] = _serve(monkeypatch, "--config", str(path), "--tick-ms", "40",
                           "--peer", "3=127.0.0.1:7003", "--max-sessions", "20",
                           secret_env=None)
    assert result.exit_code == 0, result.output
    s = cfg.settings
    assert s.replica.tick_ms == 40 and s.max_sessions == 20  # the option wins
    assert s.replica.snapshot.entries == 7 and s.backup.cluster == "prod"  # from the file
    assert s.backup.interval_s == 60.0 and s.shard.chunk_bytes == 4096
    d = NodeSettings()
    assert s.replica.election_ticks == d.replica.election_ticks  # the default
    assert s.limits == d.limits and s.history_keep == d.history_keep
    assert (cfg.node_id, cfg.groups, cfg.secret) == (2, (0, 1), "f")
    assert cfg.peers == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
    result, [cfg] = _serve(monkeypatch, "--config", str(path), "--id", "3", "--group", "1",
                           "--controller", "127.0.0.1:7001")
    assert result.exit_code == 0, result.output
    assert (cfg.node_id, cfg.groups, cfg.controller) == (3, (1,), ("127.0.0.1:7001",))


@pytest.mark.parametrize(("args", "message"), [
    (["--tick-ms", "0"], "Invalid value for '--tick-ms': must be an integer >= 1, got 0"),
    (["--election-ticks", "ten"], "Invalid value for '--election-ticks': 'ten' is not an"),
    (["--backup-interval-s", "0"], "'--backup-interval-s': must be a number > 0"),
    (["--snapshot-entries", "-1"], "must be an integer >= 0, got -1"),
    (["--heartbeat-ticks", "10"], "heartbeat_ticks (10) must be less than election_ticks (10)"),
    (["--id", "0"], "Invalid value for '--id'"),
    (["--peer", "nope"], "expected ID=HOST:PORT"),
])
def test_bad_options_are_refused(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                 message: str) -> None:
    result, captured = _serve(monkeypatch, *REQUIRED, *args)
    assert result.exit_code == 2 and not captured
    assert message in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(("toml", "message"), [
    ('tick_ms = "fast"', "tick_ms must be an integer >= 1, got 'fast'"),
    ("history_keep = 0", "history_keep must be an integer >= 1, got 0"),
    ("shard_poll_interval_s = -0.5", "shard_poll_interval_s must be a number > 0"),
    ("max_key_bytes = true", "max_key_bytes must be an integer >= 1, got True"),
    ('s3_bucket = 5', "s3_bucket must be a string"),
    ("tick_msec = 5", "unknown setting(s) tick_msec"),
    ("groups = [0, -1]", "groups must be a list of non-negative integers"),
    ('[peers]\nx = "127.0.0.1:1"', "peers must be a table of ID"),
])
def test_bad_file_values_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     toml: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(toml + "\n")
    result, captured = _serve(monkeypatch, "--config", str(path), *REQUIRED)
    assert result.exit_code == 1 and not captured, result.output
    assert f"{path}: {message}" in " ".join(result.output.split()), result.output


def test_missing_identity_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    result, captured = _serve(monkeypatch, "--id", "1")
    assert result.exit_code == 2 and not captured
    assert "--id, --listen and --data-dir are required" in result.output


def test_settings_from_layers() -> None:
    s = settings_from({"tick_ms": None, "backup_keep": 9}, {"tick_ms": 7, "backup_keep": 1})
    assert (s.replica.tick_ms, s.backup.keep) == (7, 9)
    assert settings_from() == NodeSettings()
    with pytest.raises(SettingError, match="backup_keep must be an integer >= 1, got 0"):
        settings_from({"backup_keep": 0})
    one: dict[str, Any] = {"s3_endpoint_url": "http://minio:9000"}
    assert settings_from(one).backup.endpoint_url == "http://minio:9000"


def test_serve_needs_tls_files_or_insecure(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    base = ["--id", "1", "--listen", "127.0.0.1:7001", "--data-dir", "d", "--group", "0"]
    result, got = _serve(monkeypatch, *base)
    assert result.exit_code == 2 and not got
    assert "--tls-ca" in result.output and "--insecure" in result.output
    result, got = _serve(monkeypatch, *base, "--insecure", "--tls-ca", "ca.crt")
    assert result.exit_code == 2 and "exclude each other" in result.output
    # a secret is read from a file, never taken as an argument
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    result, [cfg] = _serve(monkeypatch, *base, "--insecure", "--secret-file", str(secret),
                           secret_env=None)
    assert result.exit_code == 0, result.output
    assert cfg.secret == "from-a-file" and cfg.tls is None and not cfg.auth
    result, _ = _serve(monkeypatch, *base, "--insecure", "--secret", "s")
    assert result.exit_code == 2 and "No such option" in result.output
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result, got = _serve(monkeypatch, *base, "--insecure", "--secret-file", str(empty))
    assert result.exit_code == 2 and "empty" in result.output and not got
    # unusable TLS files are named
    result, got = _serve(monkeypatch, *base, "--tls-ca", str(tmp_path / "nope.crt"),
                         "--tls-cert", "c", "--tls-key", "k")
    assert result.exit_code == 2 and "nope.crt" in result.output and not got
    # TLS on, and with it tokens (unless --no-auth); fault injection only on request
    from kvraft import certs
    certs.init_ca(tmp_path)
    crt, key = certs.issue_node(tmp_path, 1, ["127.0.0.1"])
    tls = ["--tls-ca", str(tmp_path / "ca.crt"), "--tls-cert", str(crt), "--tls-key", str(key)]
    result, [cfg] = _serve(monkeypatch, *base, *tls)
    assert result.exit_code == 0, result.output
    assert cfg.tls is not None and cfg.auth and not cfg.fault_injection
    result, [cfg] = _serve(monkeypatch, *base, *tls, "--no-auth", "--enable-fault-injection")
    assert not cfg.auth and cfg.fault_injection
