from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.config import ConfigError, parse_duration
from sidecar.config.bootstrap import Bootstrap

PROTO = Path(__file__).resolve().parents[1] / "sidecar" / "contract" / "testdata" / "shop.proto"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "shop.proto").write_text(PROTO.read_text())
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Bootstrap.load(path)
    return [str(i) for i in info.value.issues]


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = Bootstrap.load(
        write(
            tmp_path,
            "agent: {name: shop}\nupstream: {url: 'http://127.0.0.1:8000'}\ncontract: {protos: [shop.proto]}\n",
        )
    )
    assert config.listen.inbound == "127.0.0.1:15006" and config.listen.admin == "127.0.0.1:15000"
    assert config.limits.max_message_bytes == 4 * 1024 * 1024
    assert config.contract.protos == ((tmp_path / "shop.proto").resolve(),)
    assert config.upstream.protocol == "http" and config.contract.response_mode == "enforce"


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "agent:\n"
        "  name: shop\n"
        "upstream:\n"
        "  url: ftp://nowhere\n"
        "  protocol: grpc\n"
        "contract:\n"
        "  protos: [shop.proto]\n"
        "  mode: strict\n"
        "limits:\n"
        "  max_concurrent_calls: 0\n"
        "health:\n"
        "  http: {path: /h}\n"
        "  tcp: true\n",
    )
    assert errors(path) == [
        f"{path}:4: upstream.url: invalid url 'ftp://nowhere': expected http://host:port",
        f"{path}:8: contract.mode: unknown key",
        f"{path}:11: health: set at most one of 'http', 'tcp' or 'grpc'",
        f"{path}:10: limits.max_concurrent_calls: Input should be greater than or equal to 1",
    ]


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "agent:\n  name: shop\n  version: [v1\n")
    (message,) = errors(path)
    assert message.startswith(f"{path}:4: invalid YAML")


def test_missing_sections_and_contract_sources(tmp_path: Path) -> None:
    path = write(tmp_path, "agent: {name: shop}\nupstream: {url: 'http://127.0.0.1:1'}\ncontract: {}\n")
    assert errors(path) == [f"{path}:3: contract: set exactly one of 'protos' or 'descriptor_set'"]
    path = write(tmp_path, "agent: {name: shop}\n")
    assert errors(path) == [f"{path}:1: upstream: Field required", f"{path}:1: contract: Field required"]


def test_unreadable_file(tmp_path: Path) -> None:
    assert errors(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"]


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), (3, 3.0)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5", "5x", "-1s", True, None])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
