"""Compiles a FileDescriptorSet into frozen per-method contracts.

Built once at start-up (and again on a config change): descriptors are
resolved, message classes created, skill metadata merged from the .proto's
options (`idempotency_level`, `agentmesh.v1.skill`, `google.api.http`) and
agent.yaml overrides. Nothing here runs per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message, message_factory

from agentmesh.v1 import options_pb2
from sidecar.errors import UnknownMethod


@dataclass(frozen=True)
class SkillMeta:
    """What the manifest says about one skill."""

    idempotent: bool = False
    timeout: float | None = None
    tags: tuple[str, ...] = ()
    description: str = ""
    cost: options_pb2.CostModel | None = None


@dataclass(frozen=True)
class HttpRule:
    """A `google.api.http` binding: verb, path template and body selector."""

    verb: str
    template: str
    body: str

    @classmethod
    def from_proto(cls, rule: http_pb2.HttpRule) -> HttpRule | None:
        kind = rule.WhichOneof("pattern")
        if kind is None:
            return None
        if kind == "custom":
            return cls(rule.custom.kind.upper(), rule.custom.path, rule.body)
        return cls(kind.upper(), getattr(rule, kind), rule.body)


@dataclass(frozen=True)
class MethodContract:
    """Everything the request path needs to know about one RPC method."""

    path: str  # "/package.Service/Method"
    service: str
    name: str
    input: descriptor.Descriptor
    output: descriptor.Descriptor
    request_class: type[message.Message]
    response_class: type[message.Message]
    server_streaming: bool
    client_streaming: bool
    skill: SkillMeta
    http_rule: HttpRule | None


@dataclass(frozen=True)
class ContractSet:
    """The compiled contract of one agent: its services and their methods."""

    descriptor_set: descriptor_pb2.FileDescriptorSet
    pool: descriptor_pool.DescriptorPool
    services: tuple[str, ...]
    methods: Mapping[str, MethodContract] = field(default_factory=dict)

    def method(self, path: str) -> MethodContract:
        """Looks a method up by "/pkg.Svc/Method" or "pkg.Svc.Method"."""
        found = self.methods.get(path) or self.methods.get(normalize_method(path))
        if found is None:
            raise UnknownMethod(f"method {path!r} is not part of the contract (services: {', '.join(self.services)})")
        return found

    @classmethod
    def compile(
        cls,
        fds: descriptor_pb2.FileDescriptorSet,
        *,
        services: Iterable[str] = (),
        overrides: Mapping[str, Mapping[str, object]] | None = None,
    ) -> ContractSet:
        """Builds the contract; `services` defaults to every service in the set.

        Raises ValueError naming the missing service or broken file.
        """
        pool = descriptor_pool.DescriptorPool()
        for file in fds.file:
            try:
                pool.Add(file)
            except Exception as exc:  # the pool raises TypeError/ValueError variants
                raise ValueError(f"{file.name}: cannot load descriptor: {exc}") from exc
        method_protos = {
            f"{file.package}.{svc.name}" if file.package else svc.name: {m.name: m for m in svc.method}
            for file in fds.file
            for svc in file.service
        }
        wanted = tuple(services) or tuple(_defined_services(fds))
        if not wanted:
            raise ValueError("the contract defines no service")
        methods: dict[str, MethodContract] = {}
        for service_name in wanted:
            try:
                svc = pool.FindServiceByName(service_name)
            except KeyError:
                raise ValueError(f"service {service_name!r} is not defined in the contract files") from None
            for m in svc.methods:
                path = f"/{service_name}/{m.name}"
                options = _method_options(method_protos[service_name][m.name])
                methods[path] = MethodContract(
                    path=path,
                    service=service_name,
                    name=m.name,
                    input=m.input_type,
                    output=m.output_type,
                    request_class=message_factory.GetMessageClass(m.input_type),
                    response_class=message_factory.GetMessageClass(m.output_type),
                    server_streaming=m.server_streaming,
                    client_streaming=m.client_streaming,
                    skill=_skill_meta(options, (overrides or {}).get(normalize_method(path), {})),
                    http_rule=HttpRule.from_proto(options.Extensions[annotations_pb2.http]),
                )
        return cls(fds, pool, wanted, MappingProxyType(methods))


def normalize_method(path: str) -> str:
    """'pkg.Svc.Method', 'pkg.Svc/Method' or '/pkg.Svc/Method' -> '/pkg.Svc/Method'."""
    path = path.lstrip("/")
    if "/" not in path:
        service, _, name = path.rpartition(".")
        path = f"{service}/{name}"
    return "/" + path


def _defined_services(fds: descriptor_pb2.FileDescriptorSet) -> Iterable[str]:
    # protoc lists dependencies first; services of the root files come last,
    # but any service defined in the set counts as part of the contract.
    for file in fds.file:
        if file.name.startswith(("google/", "buf/validate/", "agentmesh/v1/")):
            continue
        for svc in file.service:
            yield f"{file.package}.{svc.name}" if file.package else svc.name


def _method_options(proto: descriptor_pb2.MethodDescriptorProto) -> descriptor_pb2.MethodOptions:
    # Re-parse so extensions registered by the imported modules are decoded.
    options = descriptor_pb2.MethodOptions()
    options.ParseFromString(proto.options.SerializeToString())
    return options


def _skill_meta(options: descriptor_pb2.MethodOptions, override: Mapping[str, object]) -> SkillMeta:
    skill: options_pb2.SkillOptions = options.Extensions[options_pb2.skill]  # type: ignore[index]
    idempotent = skill.idempotent or options.idempotency_level in (
        descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        descriptor_pb2.MethodOptions.IDEMPOTENT,
    )
    values: dict[str, object] = {
        "idempotent": idempotent,
        "timeout": skill.timeout_ms / 1000 if skill.timeout_ms else None,
        "tags": tuple(skill.tags),
        "description": skill.description,
        "cost": skill.cost if skill.HasField("cost") else None,
    }
    values.update({k: v for k, v in override.items() if v is not None})
    return SkillMeta(**values)  # type: ignore[arg-type]
