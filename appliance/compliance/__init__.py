"""Transparency records of models and adapters (EU AI Act public summary of training
content), read from model cards, checked against a site's policy, exported for the
site's compliance file. Pure: no deploy, no UI."""
