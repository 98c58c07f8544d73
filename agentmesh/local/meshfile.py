"""The mesh file (mesh.yaml): which agents to run locally, each with its sidecar.

    agents:
      - name: researcher
        command: ["{python}", "agents/researcher/agent.py", "--port", "8201"]
        sidecar: agents/researcher/agent.yaml
        env: {KEY: value}

`{python}` is replaced by the running interpreter; paths are relative to the
mesh file. Validated like every other YAML file (file:line: field: reason).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from agentmesh.config import load_yaml_model


class MeshAgent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    command: tuple[str, ...] = Field(min_length=1)
    sidecar: Path
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("sidecar", mode="before")
    @classmethod
    def _relative(cls, value: object, info: ValidationInfo) -> Path:
        base = Path((info.context or {}).get("base_dir", Path.cwd()))
        path = (base / str(value)).resolve()
        if not path.is_file():
            raise ValueError(f"not found: {path}")
        return path

    def argv(self) -> list[str]:
        return [part.replace("{python}", sys.executable) for part in self.command]


class MeshFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agents: tuple[MeshAgent, ...] = Field(min_length=1)

    @field_validator("agents")
    @classmethod
    def _unique(cls, agents: tuple[MeshAgent, ...]) -> tuple[MeshAgent, ...]:
        names = [a.name for a in agents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate agent names: {', '.join(duplicates)}")
        return agents

    @classmethod
    def load(cls, path: Path) -> MeshFile:
        return load_yaml_model(path, cls)
