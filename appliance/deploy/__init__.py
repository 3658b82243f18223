"""Deployment: what changes hosts.

Desired state per host (``host_layout``, ``host_desired``, ``render``,
``staging``), probe and diff (``probe``), engines chosen from one registry
(``engines/``), and the release lifecycle over the SSH transport
(``transport``; ``lock``, ``journal``, ``host_check``, ``activation``,
``firewall``; the run itself in ``run`` and ``converge``).
"""
