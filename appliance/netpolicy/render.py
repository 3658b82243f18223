"""``appliance render``'s core: the rendering for one target, ``policy.txt``, written whole.

``render_files`` is pure (model + site -> relative path -> text);
``write_directory`` puts the files into a new (or empty) directory by writing
them beside it and renaming the finished directory into place, so a failure
leaves nothing half-written and an existing rendering is never mixed with a
new one.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.netpolicy.k8s import ANALYSIS_DIR, MANIFESTS_DIR, NAMESPACE, render_manifests
from appliance.netpolicy.model import (
    NetworkPolicyError,
    PolicyModel,
    Site,
    Target,
    describe_model,
    describe_site,
)
from appliance.netpolicy.nftables import COUNTERS, host_rulesets

NFTABLES_DIR = "nftables"


@dataclass(frozen=True, slots=True)
class WrittenFile:
    path: str  # relative to the output directory
    sha256: str
    size: int


def render_files(model: PolicyModel, site: Site, target: Target) -> dict[str, str]:
    """Relative path -> text for ``target``, plus ``policy.txt``."""
    if target == "host":
        files = {f"{NFTABLES_DIR}/{n}": t for n, t in host_rulesets(model, site).items()}
    else:
        files = render_manifests(model, site)
    files["policy.txt"] = policy_text(model, site, target, sorted(files))
    return dict(sorted(files.items()))


def policy_text(model: PolicyModel, site: Site, target: Target, paths: list[str]) -> str:
    parts = [describe_model(model), describe_site(site, target)]
    if target == "host":
        counters = "\n".join(
            f"    {name:13s} {what} (log prefix {prefix.strip()!r})"
            for name, (what, prefix) in COUNTERS.items()
        )
        parts.append(
            "Rendering: nftables, one ruleset per host (or per role without an inventory)\n"
            "  Each file is one `table inet appliance`, loaded atomically. Input, output and\n"
            "  forward drop by default; loopback and replies to established connections pass;\n"
            "  then the host flows above whose destination (input) or source (output) is one\n"
            "  of the host's roles or serving group components, matched against sets named\n"
            "  after the peer component (a group's flows on the group's interface only).\n"
            "  Outbound packets to any address outside the site networks are dropped first,\n"
            "  even replies. Every drop is counted and logged (at most 10 a minute):\n"
            f"{counters}\n"
        )
        review = (
            "How to review\n"
            f"  nft -c -f {NFTABLES_DIR}/FILE   check a ruleset against the kernel (root; changes nothing)\n"
            "  Read each file's rules: every accept names its flow in a comment.\n"
            "  On a host: nft list ruleset; nft list counters table inet appliance\n"
            "  Laying it down safely (revert unless confirmed): docs/network.md\n"
        )
    else:
        parts.append(
            f"Rendering: Kubernetes NetworkPolicies in namespace {NAMESPACE}\n"
            f"  {MANIFESTS_DIR}/: apply these. default-deny selects every pod for ingress and\n"
            "  egress; allow-COMPONENT allows that component's k8s flows above, one rule per\n"
            "  peer (a group's: allow-group-NAME, allow-head-of-group-NAME, selecting pods\n"
            "  labelled appliance/group=NAME and appliance/group-role=head|worker). Egress\n"
            "  goes to pods of the namespace and kube-dns only: no ipBlock.\n"
            f"  {ANALYSIS_DIR}/: stand-in pods for offline analysis only. Never apply them.\n"
        )
        review = (
            "How to review\n"
            f"  kubernetes-validate --strict {MANIFESTS_DIR}/*.yaml {ANALYSIS_DIR}/*.yaml\n"
            f"  nca --connectivity -r {MANIFESTS_DIR} -r {ANALYSIS_DIR} -o txt_no_fw_rules --output_endpoints pods\n"
            "  Each line of nca's report is one allowed connection; appliance/* lines must be\n"
            "  exactly the k8s flows above (tests/unit/netpolicy check this).\n"
        )
    parts.append("Files\n" + "".join(f"  {p}\n" for p in [*paths, "policy.txt"]))
    parts.append(review)
    return "\n".join(parts)


def write_directory(files: dict[str, str], out: Path) -> list[WrittenFile]:
    """Write ``files`` into ``out`` (created, or empty), all or nothing."""
    try:
        _check_target(out)
    except OSError as exc:
        raise NetworkPolicyError(
            f"--out {out}: cannot inspect it: {exc.strerror or exc}",
            hint="Give a directory you may read and write.",
        ) from exc
    partial = out.absolute().parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    written = []
    try:
        partial.mkdir()
        for relative, text in files.items():
            path = partial / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            data = text.encode()
            path.write_bytes(data)
            written.append(WrittenFile(relative, hashlib.sha256(data).hexdigest(), len(data)))
        partial.rename(out)  # replaces an empty directory in one step
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise NetworkPolicyError(
            f"--out {out}: could not write the rendering: {exc.strerror or exc}",
            hint="Check that the directory is writable and has space; nothing was left behind.",
        ) from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return written


def _check_target(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise NetworkPolicyError(
            f"--out {out}: expected a new or empty directory, found an existing file or link",
            hint="Give a directory path that does not exist yet.",
        )
    if out.exists():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
            raise NetworkPolicyError(
                f"--out {out}: expected a new or empty directory, found {len(entries)} "
                f"entr{'y' if len(entries) == 1 else 'ies'} ({shown})",
                hint="Render into a new directory (then compare with `diff -r OLD NEW`), "
                "or remove the old rendering first.",
            )
    parent = out.absolute().parent
    if not parent.is_dir():
        raise NetworkPolicyError(
            f"--out {out}: expected an existing parent directory, found no {parent}",
            hint=f"Create it first (mkdir -p {parent}).",
        )
