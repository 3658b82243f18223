"""A multi-node serving group's network, as the plan hands it to the engine commands, the
units and the network policy.

Built by the site plan from the inventory's ``groups`` entry and each member's facts
(its address on the group's interface). Pure data: no I/O.

Invariants: ``hosts`` and ``addresses`` are in the same order, the head first; every
address is the member's IPv4 address on ``interface``; ``master_port`` lies outside
``port_range``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GroupNetwork:
    name: str  # the inventory's group name
    hosts: tuple[str, ...]  # inventory host names, head first
    interface: str  # the NIC the members reach each other on
    addresses: tuple[str, ...]  # each member's address on ``interface``, same order as hosts
    master_port: int  # the head's rendezvous (torch.distributed TCPStore) port
    port_range: tuple[int, int]  # the members' ephemeral ports (collective library sockets)

    @property
    def head(self) -> str:
        return self.hosts[0]

    @property
    def head_address(self) -> str:
        return self.addresses[0]

    def address_of(self, host: str) -> str:
        return self.addresses[self.hosts.index(host)]

    def rank_of(self, host: str) -> int:
        return self.hosts.index(host)
