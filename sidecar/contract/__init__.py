"""The agent's typed contract, compiled once per configuration.

`ContractSet` (compiled.py) resolves every method's descriptors, message
classes, validator and HTTP rule when the sidecar starts, so the request path
only looks a method up and checks messages (checker.py).
"""

from sidecar.contract.checker import MessageChecker
from sidecar.contract.compiled import ContractSet, HttpRule, MethodContract, SkillMeta

__all__ = ["ContractSet", "HttpRule", "MessageChecker", "MethodContract", "SkillMeta"]
