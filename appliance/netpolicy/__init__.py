"""Network isolation from one policy model: who may talk to whom on which port; nothing leaves the site.

``model`` holds the model (components and flows, built from a hardware
profile) and its binding to a site's addresses; ``nftables`` renders it as one
ruleset per host or role, ``k8s`` as NetworkPolicies; ``render`` writes either
rendering, with a readable ``policy.txt``, into a new directory. All of it is
pure data and text: nothing here touches the network or a host.
"""
