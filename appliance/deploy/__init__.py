"""Deployment: desired state per host, engines (pyinfra, Ansible) that converge hosts to it."""
