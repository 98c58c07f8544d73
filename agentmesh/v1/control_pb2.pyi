import datetime

from agentmesh.v1 import manifest_pb2 as _manifest_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InstanceReport(_message.Message):
    __slots__ = ("manifest", "address", "healthy", "instance_id", "zone", "admin_address", "mtls", "spiffe_id")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ADMIN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    manifest: _manifest_pb2.Manifest
    address: str
    healthy: bool
    instance_id: str
    zone: str
    admin_address: str
    mtls: bool
    spiffe_id: str
    def __init__(self, manifest: _Optional[_Union[_manifest_pb2.Manifest, _Mapping]] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., instance_id: _Optional[str] = ..., zone: _Optional[str] = ..., admin_address: _Optional[str] = ..., mtls: _Optional[bool] = ..., spiffe_id: _Optional[str] = ...) -> None: ...

class RegistrationStatus(_message.Message):
    __slots__ = ("instance_id", "heartbeat_interval_ms")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    heartbeat_interval_ms: int
    def __init__(self, instance_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class PolicyFile(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: str
    def __init__(self, name: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ApplyPoliciesRequest(_message.Message):
    __slots__ = ("files", "author", "message", "dry_run", "prune")
    FILES_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[PolicyFile]
    author: str
    message: str
    dry_run: bool
    prune: bool
    def __init__(self, files: _Optional[_Iterable[_Union[PolicyFile, _Mapping]]] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., dry_run: _Optional[bool] = ..., prune: _Optional[bool] = ...) -> None: ...

class PolicyRef(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class PolicyChange(_message.Message):
    __slots__ = ("version", "dry_run", "added", "changed", "removed", "unchanged", "diff", "warnings")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    version: int
    dry_run: bool
    added: _containers.RepeatedCompositeFieldContainer[PolicyRef]
    changed: _containers.RepeatedCompositeFieldContainer[PolicyRef]
    removed: _containers.RepeatedCompositeFieldContainer[PolicyRef]
    unchanged: _containers.RepeatedCompositeFieldContainer[PolicyRef]
    diff: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., dry_run: _Optional[bool] = ..., added: _Optional[_Iterable[_Union[PolicyRef, _Mapping]]] = ..., changed: _Optional[_Iterable[_Union[PolicyRef, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[PolicyRef, _Mapping]]] = ..., unchanged: _Optional[_Iterable[_Union[PolicyRef, _Mapping]]] = ..., diff: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPoliciesRequest(_message.Message):
    __slots__ = ("kind", "name", "version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    version: int
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class StoredPolicy(_message.Message):
    __slots__ = ("kind", "name", "yaml")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    yaml: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., yaml: _Optional[str] = ...) -> None: ...

class PolicyList(_message.Message):
    __slots__ = ("version", "policies")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    version: int
    policies: _containers.RepeatedCompositeFieldContainer[StoredPolicy]
    def __init__(self, version: _Optional[int] = ..., policies: _Optional[_Iterable[_Union[StoredPolicy, _Mapping]]] = ...) -> None: ...

class DeletePolicyRequest(_message.Message):
    __slots__ = ("kind", "name", "author", "dry_run")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    author: str
    dry_run: bool
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., author: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PolicyHistoryRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class PolicyVersion(_message.Message):
    __slots__ = ("version", "author", "time", "message", "added", "changed", "removed", "diff")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    version: int
    author: str
    time: _timestamp_pb2.Timestamp
    message: str
    added: _containers.RepeatedCompositeFieldContainer[PolicyRef]
    changed: _containers.RepeatedCompositeFieldContainer[PolicyRef]
    removed: _containers.RepeatedCompositeFieldContainer[PolicyRef]
    diff: str
    def __init__(self, version: _Optional[int] = ..., author: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., added: _Optional[_Iterable[_Union[PolicyRef, _Mapping]]] = ..., changed: _Optional[_Iterable[_Union[PolicyRef, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[PolicyRef, _Mapping]]] = ..., diff: _Optional[str] = ...) -> None: ...

class PolicyHistoryResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[PolicyVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[PolicyVersion, _Mapping]]] = ...) -> None: ...

class RollbackPoliciesRequest(_message.Message):
    __slots__ = ("version", "author", "dry_run")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    version: int
    author: str
    dry_run: bool
    def __init__(self, version: _Optional[int] = ..., author: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AgentInstanceStatus(_message.Message):
    __slots__ = ("instance_id", "address", "healthy", "last_report", "zone")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    address: str
    healthy: bool
    last_report: _timestamp_pb2.Timestamp
    zone: str
    def __init__(self, instance_id: _Optional[str] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., last_report: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., zone: _Optional[str] = ...) -> None: ...

class AgentVersionStatus(_message.Message):
    __slots__ = ("version", "instances")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    version: str
    instances: _containers.RepeatedCompositeFieldContainer[AgentInstanceStatus]
    def __init__(self, version: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[AgentInstanceStatus, _Mapping]]] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("name", "team", "services", "versions", "skills")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    name: str
    team: str
    services: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.RepeatedCompositeFieldContainer[AgentVersionStatus]
    skills: _containers.RepeatedCompositeFieldContainer[_manifest_pb2.Skill]
    def __init__(self, name: _Optional[str] = ..., team: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., versions: _Optional[_Iterable[_Union[AgentVersionStatus, _Mapping]]] = ..., skills: _Optional[_Iterable[_Union[_manifest_pb2.Skill, _Mapping]]] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...

class ProxyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResourceSync(_message.Message):
    __slots__ = ("type", "status", "sent_version", "acked_version", "error")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: str
    sent_version: str
    acked_version: str
    error: str
    def __init__(self, type: _Optional[str] = ..., status: _Optional[str] = ..., sent_version: _Optional[str] = ..., acked_version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ProxySync(_message.Message):
    __slots__ = ("node_id", "cluster", "user_agent", "connected_since", "resources")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster: str
    user_agent: str
    connected_since: _timestamp_pb2.Timestamp
    resources: _containers.RepeatedCompositeFieldContainer[ResourceSync]
    def __init__(self, node_id: _Optional[str] = ..., cluster: _Optional[str] = ..., user_agent: _Optional[str] = ..., connected_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resources: _Optional[_Iterable[_Union[ResourceSync, _Mapping]]] = ...) -> None: ...

class ProxyStatusResponse(_message.Message):
    __slots__ = ("snapshot_version", "proxies")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: str
    proxies: _containers.RepeatedCompositeFieldContainer[ProxySync]
    def __init__(self, snapshot_version: _Optional[str] = ..., proxies: _Optional[_Iterable[_Union[ProxySync, _Mapping]]] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Finding(_message.Message):
    __slots__ = ("severity", "subject", "message")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    severity: str
    subject: str
    message: str
    def __init__(self, severity: _Optional[str] = ..., subject: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("findings",)
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    def __init__(self, findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("join_token", "csr_pem")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    csr_pem: bytes
    def __init__(self, join_token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem", "certificate_chain_pem", "csr_signature")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    CSR_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    certificate_chain_pem: bytes
    csr_signature: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ..., certificate_chain_pem: _Optional[bytes] = ..., csr_signature: _Optional[bytes] = ...) -> None: ...

class IdentityCertificate(_message.Message):
    __slots__ = ("spiffe_id", "certificate_chain_pem", "trust_bundle_pem", "not_before", "not_after")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    certificate_chain_pem: bytes
    trust_bundle_pem: bytes
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    def __init__(self, spiffe_id: _Optional[str] = ..., certificate_chain_pem: _Optional[bytes] = ..., trust_bundle_pem: _Optional[bytes] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetTrustBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrustBundle(_message.Message):
    __slots__ = ("trust_domain", "trust_bundle_pem")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    trust_bundle_pem: bytes
    def __init__(self, trust_domain: _Optional[str] = ..., trust_bundle_pem: _Optional[bytes] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("agent", "team", "ttl", "max_uses", "description")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    agent: str
    team: str
    ttl: _duration_pb2.Duration
    max_uses: int
    description: str
    def __init__(self, agent: _Optional[str] = ..., team: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_uses: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class JoinToken(_message.Message):
    __slots__ = ("id", "agent", "team", "spiffe_id", "created", "expires", "max_uses", "uses", "revoked", "created_by", "description", "secret")
    ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    id: str
    agent: str
    team: str
    spiffe_id: str
    created: _timestamp_pb2.Timestamp
    expires: _timestamp_pb2.Timestamp
    max_uses: int
    uses: int
    revoked: bool
    created_by: str
    description: str
    secret: str
    def __init__(self, id: _Optional[str] = ..., agent: _Optional[str] = ..., team: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ..., revoked: _Optional[bool] = ..., created_by: _Optional[str] = ..., description: _Optional[str] = ..., secret: _Optional[str] = ...) -> None: ...

class ListJoinTokensRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListJoinTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[JoinToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[JoinToken, _Mapping]]] = ...) -> None: ...

class RevokeJoinTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CreateCredentialRequest(_message.Message):
    __slots__ = ("name", "role", "teams", "ttl")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    teams: _containers.RepeatedScalarFieldContainer[str]
    ttl: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., teams: _Optional[_Iterable[str]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("id", "name", "role", "teams", "created", "expires", "revoked", "created_by", "secret")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    teams: _containers.RepeatedScalarFieldContainer[str]
    created: _timestamp_pb2.Timestamp
    expires: _timestamp_pb2.Timestamp
    revoked: bool
    created_by: str
    secret: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., teams: _Optional[_Iterable[str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: _Optional[bool] = ..., created_by: _Optional[str] = ..., secret: _Optional[str] = ...) -> None: ...

class ListCredentialsRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListCredentialsResponse(_message.Message):
    __slots__ = ("credentials",)
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    def __init__(self, credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ...) -> None: ...

class RevokeCredentialRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCertificateAuthorityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CertificateAuthority(_message.Message):
    __slots__ = ("trust_domain", "trust_bundle_pem", "issuer_pem", "issuer_not_after", "workload_ttl", "issued")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    ISSUER_PEM_FIELD_NUMBER: _ClassVar[int]
    ISSUER_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_TTL_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    trust_bundle_pem: bytes
    issuer_pem: bytes
    issuer_not_after: _timestamp_pb2.Timestamp
    workload_ttl: _duration_pb2.Duration
    issued: int
    def __init__(self, trust_domain: _Optional[str] = ..., trust_bundle_pem: _Optional[bytes] = ..., issuer_pem: _Optional[bytes] = ..., issuer_not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., workload_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., issued: _Optional[int] = ...) -> None: ...
