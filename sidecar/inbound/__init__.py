"""Inbound listener (:15006): the agent's typed services behind the contract chain."""
