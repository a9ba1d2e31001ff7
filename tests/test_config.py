from __future__ import annotations

from pathlib import Path

import pytest

from mailingest.config import Config, Secret, load_config, parse_duration
from mailingest.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_zero_config_defaults_are_loopback_sqlite_and_drop_dir() -> None:
    config = load_config(None, environ={})
    assert config.api.listen.startswith("127.0.0.1:")
    assert config.sources.smtp.listen.startswith("127.0.0.1:")
    assert config.storage_url.startswith("sqlite:///") and config.storage_url.endswith("data/mailingest.db")
    assert config.drop_path == Path("data/inbox")
    assert config.outbox.retry_schedule[:3] == [0, 5, 300]


def test_unknown_key_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[sources.smtp]\nlisen = "127.0.0.1:25"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "sources.smtp.lisen" in err.value.detail


def test_inline_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[connectors.webhook]]\nname = "erp"\nurl = "https://x.example"\nsecret = "whsec_abc"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "connectors.webhook.0.secret" in err.value.detail
    assert "inline" in err.value.detail


def test_secrets_resolve_from_env_and_file_and_never_print(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "s"
    secret_file.write_text("whsec_fromfile\n")
    path = tmp_path / "c.toml"
    path.write_text(
        '[[connectors.webhook]]\nname = "a"\nurl = "https://a.example"\nsecret = { env = "A_SECRET" }\n'
        '[[connectors.webhook]]\nname = "b"\nurl = "https://b.example"\n'
        f'secret = {{ file = "{secret_file}" }}\n'
    )
    monkeypatch.setenv("A_SECRET", "whsec_fromenv")
    config = load_config(path, environ={})
    a, b = config.connectors.webhook
    assert a.secret.get() == "whsec_fromenv"
    assert b.secret.get() == "whsec_fromfile"
    dumped = repr(config) + config.model_dump_json()
    assert "fromenv" not in dumped and "fromfile" not in dumped


def test_missing_secret_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        Secret(env="NOPE_NOT_SET").get()


def test_environment_overrides_nested_keys(tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={
            "MAILINGEST_API__LISTEN": "127.0.0.1:9999",
            "MAILINGEST_SOURCES__SMTP__MAX_MESSAGE_BYTES": "1000",
            "MAILINGEST_DATA_DIR": str(tmp_path),
            "MAILINGEST_SOURCES__DROP__ENABLED": "false",
        },
    )
    assert config.api.listen == "127.0.0.1:9999"
    assert config.sources.smtp.max_message_bytes == 1000
    assert config.data_dir == tmp_path
    assert config.sources.drop.enabled is False


def test_environment_override_with_unknown_key_fails() -> None:
    with pytest.raises(ConfigError, match=r"api\.bogus"):
        load_config(None, environ={"MAILINGEST_API__BOGUS": "1"})


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[api\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60), ("5m", 300), ("2h", 7200), ("250ms", 0.25), (3, 3)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_example_config_documents_a_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """config.example.toml must stay loadable: it is what users copy."""
    monkeypatch.setenv("ERP_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    config = load_config(ROOT / "config.example.toml", environ={})
    assert isinstance(config, Config)
    assert config.connectors.webhook, "the example shows a webhook connector"


def test_example_config_mentions_every_key() -> None:
    """Every config key (by its last name) appears in config.example.toml."""
    text = (ROOT / "config.example.toml").read_text()

    def keys(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, f in model.model_fields.items():  # type: ignore[attr-defined]
            out.append(f"{prefix}{name}")
            ann = f.annotation
            inner = getattr(ann, "__args__", (ann,))
            for t in inner:
                if isinstance(t, type) and hasattr(t, "model_fields") and t is not Secret:
                    out.extend(keys(t, f"{prefix}{name}."))
        return out

    missing = [k for k in keys(Config) if k.rsplit(".", 1)[-1] not in text]
    assert not missing, f"undocumented keys: {missing}"
