"""agent.yaml's `identity:` section and the start-up decision: is mTLS on, and why (or why not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agentmesh.config import ConfigError
from sidecar.config.bootstrap import Bootstrap
from sidecar.identity import JOIN_TOKEN_ENV, default_identity_dir, plan_identity

PROTO = 'syntax = "proto3";\npackage t.v1;\nmessage M {}\nservice S { rpc Do(M) returns (M); }\n'


def _write(tmp_path: Path, **sections: Any) -> Path:
    (tmp_path / "t.proto").write_text(PROTO)
    config = {
        "agent": {"name": "researcher", "team": "research"},
        "upstream": {"url": "http://127.0.0.1:8201"},
        "contract": {"protos": ["t.proto"]},
        **sections,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


LINK = {"address": "127.0.0.1:15010"}


def _never(_: Path) -> bool:
    return False


def test_defaults_strict_and_no_token(tmp_path: Path) -> None:
    bootstrap = Bootstrap.load(_write(tmp_path))
    assert bootstrap.identity.mode == "strict"
    assert bootstrap.identity.join_token is None and bootstrap.identity.dir is None


def test_paths_are_relative_to_agent_yaml(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("secret-from-file\n")
    bootstrap = Bootstrap.load(
        _write(tmp_path, control_plane=LINK, identity={"join_token_file": "token", "dir": "id", "mode": "permissive"})
    )
    assert bootstrap.identity.join_token_file == tmp_path / "token"
    assert bootstrap.identity.dir == tmp_path / "id"
    plan = plan_identity(bootstrap, environ={}, persisted=_never)
    assert plan.enabled and plan.mode == "permissive" and plan.join_token == "secret-from-file"
    assert "secret" not in repr(plan)


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ({"mode": "lenient"}, "identity.mode: Input should be 'strict' or 'permissive'"),
        ({"join_token": "a", "join_token_file": "agent.yaml"}, "identity: set at most one of"),
        ({"join_token_file": "missing"}, "identity.join_token_file: not found:"),
        ({"dir": "agent.yaml"}, "identity.dir: not a folder:"),
        ({"join_token": ""}, "identity.join_token: String should have at least 1 character"),
        ({"token": "x"}, "identity.token: unknown key"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, identity: dict[str, str], message: str) -> None:
    path = _write(tmp_path, identity=identity)
    with pytest.raises(ConfigError) as error:
        Bootstrap.load(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("identity:"))
    assert str(error.value).startswith(f"{path}:")
    assert message in str(error.value)
    assert all(issue.line is not None and issue.line >= line for issue in error.value.issues)


def test_without_a_control_plane_link_mtls_is_off_and_says_why(tmp_path: Path) -> None:
    bootstrap = Bootstrap.load(_write(tmp_path, identity={"join_token": "t"}))
    plan = plan_identity(bootstrap, environ={}, persisted=_never)
    assert not plan.enabled
    assert "no control_plane link" in plan.reason


def test_without_token_or_persisted_identity_mtls_is_off_and_says_why(tmp_path: Path) -> None:
    bootstrap = Bootstrap.load(_write(tmp_path, control_plane=LINK))
    plan = plan_identity(bootstrap, environ={}, persisted=_never)
    assert not plan.enabled
    assert JOIN_TOKEN_ENV in plan.reason and str(plan.dir) in plan.reason


def test_the_token_may_come_from_the_environment(tmp_path: Path) -> None:
    bootstrap = Bootstrap.load(_write(tmp_path, control_plane=LINK))
    plan = plan_identity(bootstrap, environ={JOIN_TOKEN_ENV: " from-env \n"}, persisted=_never)
    assert plan.enabled and plan.join_token == "from-env"
    assert JOIN_TOKEN_ENV in plan.reason


def test_a_persisted_identity_turns_mtls_on_without_a_token(tmp_path: Path) -> None:
    bootstrap = Bootstrap.load(_write(tmp_path, control_plane=LINK, identity={"dir": "."}))
    plan = plan_identity(bootstrap, environ={}, persisted=lambda d: d == tmp_path)
    assert plan.enabled and plan.join_token is None
    assert "persisted" in plan.reason


def test_the_default_folder_sits_next_to_the_config_cache(tmp_path: Path) -> None:
    cached = Bootstrap.load(_write(tmp_path, control_plane={**LINK, "config_cache": str(tmp_path / "r-0.xds.json")}))
    assert default_identity_dir(cached) == tmp_path / "r-0.xds.identity"
    plain = Bootstrap.load(_write(tmp_path, control_plane=LINK))
    assert default_identity_dir(plain).name == "agentmesh-identity-researcher-127.0.0.1_15006"
