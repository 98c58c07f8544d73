from __future__ import annotations

from pathlib import Path

from agentmesh.protoc import compile_descriptor_set
from sidecar.contract import ContractSet
from sidecar.filters.usage import Usage, UsageReader

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "agents"


def test_usage_is_read_from_the_agents_response() -> None:
    contract = ContractSet.compile(compile_descriptor_set([EXAMPLES / "researcher" / "researcher.proto"]))
    method = contract.method("/research.v1.Researcher/Search")
    reader = UsageReader.for_type(method.output)
    assert reader is not None
    response = method.response_class(usage={"input_tokens": 12, "output_tokens": 30}, model="m-1")
    assert reader.read(response) == Usage(12, 30, "m-1")
    assert reader.read(method.response_class()) is None  # no usage reported
    # Request types carry no usage.
    assert UsageReader.for_type(method.input) is None
