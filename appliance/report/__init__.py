"""What reads the site after a deploy: host status, the smoke test, the hosts' audit logs.

Reads only (the audit anchors on this machine excepted). ``report`` may use
``deploy``'s SSH transport and host layout; ``deploy`` never imports ``report``.
"""
