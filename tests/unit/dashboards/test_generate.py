"""dashboards.generate: the committed JSON is what the Python renders, and --check says when it is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboards import generate


def test_committed_dashboards_are_up_to_date() -> None:
    assert generate.stale() == [], "run: python -m dashboards.generate"


def test_rendering_is_deterministic() -> None:
    assert generate.render() == generate.render()


def test_check_passes_on_a_fresh_write(tmp_path: Path) -> None:
    written = generate.write(tmp_path)
    assert sorted(path.name for path in written) == sorted(generate.DASHBOARDS)
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0


def test_check_fails_on_a_stale_missing_or_extra_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate.write(tmp_path)
    (tmp_path / "agent.json").write_text("{}\n")
    (tmp_path / "control-plane.json").unlink()
    (tmp_path / "old.json").write_text("{}\n")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "agent.json: out of date" in err
    assert "control-plane.json: missing" in err
    assert "old.json: not generated" in err


def test_check_fails_when_the_directory_is_missing(tmp_path: Path) -> None:
    assert generate.main(["--check", "--out", str(tmp_path / "nowhere")]) == 1


def test_main_writes_the_files(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.stale(tmp_path) == []


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_panels_and_queries_are_numbered(name: str) -> None:
    model = json.loads(generate.render()[name])
    ids = [panel["id"] for panel in model["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    for panel in model["panels"]:
        ref_ids = [target["refId"] for target in panel.get("targets", [])]
        assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids)


def test_dashboards_have_unique_uids_and_the_expected_titles() -> None:
    models = [json.loads(text) for text in generate.render().values()]
    assert len({model["uid"] for model in models}) == len(models)
    assert {model["title"] for model in models} == {
        "AgentMesh / Mesh overview",
        "AgentMesh / Agent",
        "AgentMesh / Control plane",
        "AgentMesh / Traces",
    }
    for model in models:
        assert "agentmesh" in model["tags"]


def test_agent_dashboard_is_templated_by_agent_version_and_method() -> None:
    model = json.loads(generate.render()["agent.json"])
    variables = {variable["name"]: variable for variable in model["templating"]["list"]}
    assert set(variables) == {"agent", "version", "method"}
    assert variables["agent"]["multi"] is False
    assert variables["version"]["multi"] is True and variables["version"]["allValue"] == ".*"


def test_agent_latency_heatmap_shows_exemplars() -> None:
    model = json.loads(generate.render()["agent.json"])
    [heatmap] = [panel for panel in model["panels"] if panel["type"] == "heatmap"]
    [target] = heatmap["targets"]
    assert target["exemplar"] is True
    assert target["format"] == "heatmap"
    assert "agentmesh_request_duration_seconds_bucket" in target["expr"]
