"""Settings come from TENANTRY_* variables; logs are JSON lines that never carry a key."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from pydantic import ValidationError

from tenantry.contract.keys import generate_key
from tenantry.logs import configure_logging
from tenantry.settings import Settings


def test_defaults_run_the_platform_with_no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("TENANTRY_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.database_url.startswith("sqlite+aiosqlite://")
    assert settings.redis_url is None
    assert settings.registry.source == "file"


def test_nested_settings_come_from_double_underscore_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TENANTRY_API__PORT", "8080")
    monkeypatch.setenv("TENANTRY_API__TRUSTED_PROXIES", '["10.0.0.0/8"]')
    monkeypatch.setenv("TENANTRY_REGISTRY__SOURCE", "kubernetes")
    settings = Settings()
    assert settings.api.port == 8080
    assert str(settings.api.trusted_proxies[0]) == "10.0.0.0/8"
    assert settings.registry.source == "kubernetes"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("TENANTRY_API__PORT", "70000", "api.port"),
        ("TENANTRY_REGISTRY__SOURCE", "etcd", "registry.source"),
        ("TENANTRY_LOG_LEVEL", "loud", "log_level"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert field in str(refused.value).replace("\n", ".").replace(" ", "")


def test_log_lines_are_json_and_never_carry_key_material(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    key = generate_key()
    structlog.get_logger("tenantry.test").info(
        "request.refused", header=f"Bearer {key.plaintext}", tenant="team-a/acme"
    )
    logging.getLogger("uvicorn.error").warning("bad key %s", key.plaintext)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"].split(" ")[0] for line in lines] == ["request.refused", "bad"]
    assert lines[0]["tenant"] == "team-a/acme"
    assert lines[0]["level"] == "info"
    assert all(key.plaintext not in json.dumps(line) for line in lines)
    assert f"tnt_{key.key_id}_[REDACTED]" in lines[0]["header"]
