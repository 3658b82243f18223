"""Core results as text for the screens: the same information the CLI prints, in Rich ``Text``.

Pure functions over core data (no Textual, no IO), so every screen shows what
``appliance detect|plan|bundle verify|deploy`` show, worded the same way.
Meaning is never carried by colour alone: every verdict is also a word or a
symbol (OK, FAIL, !!, CHOSEN, REJECTED, FITS, DOES NOT FIT, VERIFIED, and the
preflights' PASS, FAIL, WARN, SKIP).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from appliance.bundle.site.verify import VerifiedBundle
    from appliance.deploy.run import HostResult
    from appliance.deploy.site import Site
    from appliance.detect.facts import HostFacts
    from appliance.errors import ApplianceError
    from appliance.model.info import ModelInfo
    from appliance.plan.engine_args import NodeCommand
    from appliance.plan.fit import Estimate, FitReport
    from appliance.plan.preflight import Preflight
    from appliance.plan.report import Plan
    from appliance.plan.selection import Candidate

GIB = 1 << 30

# What a deploy lays down, and how its endpoint is reached: one place, worded here only.
SITE_NONE = "No site file: model server only, on each host's loopback"

# Done, without a site file: the gateway exists, it was not asked for.
NO_GATEWAY_TITLE = "No gateway: how to reach the model server"
NO_GATEWAY_HOWTO = (
    "This deploy was made without a site file, so only the model server was laid down: "
    "it listens on each host's loopback (127.0.0.1), nothing there checks a token, and it "
    "is reachable from this machine through SSH only "
    "(ssh -L PORT:127.0.0.1:PORT USER@HOST, then http://127.0.0.1:PORT/v1). "
    "For the authenticating gateway (TLS, tokens from the site's Keycloak realm) and each "
    "host's firewall, deploy again with a site file: appliance tui --site FILE "
    "(or appliance deploy --site FILE)."
)
TOKEN_TITLE = "How a caller gets a token"


def site_line(site: Site | None) -> str:
    """Whether the deploy lays down the gateway and the firewall (the plan review says it)."""
    if site is None:
        return SITE_NONE
    if site.config.sso is not None and site.config.sso.install is not None:
        return (
            f"Site file: {site.path}; gateway, firewall and Keycloak (realm "
            f"{site.config.sso.realm}, from the bundle) will be laid down"
        )
    return f"Site file: {site.path}; gateway and firewall will be laid down"


def token_howto(issuer: str, audience: str) -> str:
    """How a caller of the gateway gets a token, and what to trust and where calls are audited."""
    from appliance.deploy.gateway_layer import GATEWAY_AUDIT, GATEWAY_CERT

    return (
        "A caller is a client of the site's realm (its client id and the secret made for it "
        "on site, never sent from here). It asks the realm for a token with the "
        "client-credentials grant: POST grant_type=client_credentials with HTTP basic auth "
        f"CLIENT_ID:SECRET to {issuer}/protocol/openid-connect/token. The gateway accepts "
        f"tokens issued by {issuer} for audience {audience}, sent as "
        "'Authorization: Bearer TOKEN'.\n"
        f"Trust the gateway's certificate, {GATEWAY_CERT} on each host: made there at first "
        "start unless the site put its own there. Copy it to the caller (or trust the site CA "
        "that signed the site's own certificate).\n"
        f"Each call is recorded in {GATEWAY_AUDIT} on the host."
    )


# Deploy outcome per host, as a word first (colour only repeats it).
STATUS_WORDS: dict[str, tuple[str, str]] = {
    "planned": ("PLANNED", ""),
    "converged": ("OK", "bold green"),
    "unchanged": ("OK", "bold green"),
    "failed": ("FAIL", "bold red"),
    "rolled-back": ("FAIL (rolled back)", "bold red"),
}


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def size(value: int) -> str:
    """Bytes for a person: B, KiB, MiB or GiB."""
    for unit, factor in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} B"


def error_lines(exc: ApplianceError) -> list[str]:
    """What the CLI prints for an error, without its ``appliance: `` prefix."""
    lines = [f"error: {exc.message}"]
    if exc.hint:
        lines.append(exc.hint)
    return lines


def _lines(*parts: Text | str) -> Text:
    return Text("\n").join(Text(p) if isinstance(p, str) else p for p in parts)


# --- hardware ---------------------------------------------------------------------------


def host_summary(facts: HostFacts) -> Text:
    cpu, mem, gpu = facts.cpu, facts.memory, facts.gpu
    lines: list[Text | str] = [
        Text.assemble(
            (facts.hostname, "bold"),
            f"  {facts.os.distribution}, kernel {facts.os.kernel}, Python {facts.os.python}",
        ),
        f"CPU   {cpu.model} ({cpu.architecture}): {cpu.physical_cores} physical / "
        f"{cpu.logical_cores} logical cores",
        f"      flags for llama.cpp: {' '.join(cpu.flags) or 'none of interest'}",
        f"RAM   {gib(mem.total_bytes)} total, {gib(mem.available_bytes)} available",
    ]
    for disk in facts.disks:
        where = "" if disk.measured_at == disk.path else f" (measured at {disk.measured_at})"
        lines.append(
            f"Disk  {disk.path}: {gib(disk.free_bytes)} free of {gib(disk.total_bytes)}{where}"
        )
    if gpu.usable:
        lines.append(Text.assemble("GPU   ", ("OK ", "bold green"), gpu.message))
    else:
        lines.append(Text.assemble("GPU   ", ("!! NO USABLE GPU: ", "bold yellow"), gpu.message))
    return _lines(*lines)


def gpu_warnings(facts: HostFacts) -> Text:
    return _lines(
        *(Text.assemble(("!! ", "bold yellow"), f"warning: {w}") for w in facts.gpu.warnings)
    )


# --- profile, evidence, fit ----------------------------------------------------------------


def selection_summary(plan: Plan) -> Text:
    sel = plan.selection
    how = "chosen automatically" if sel.mode == "auto" else "chosen by you"
    lines: list[Text | str] = [
        Text.assemble(
            ("Profile: ", "bold"), (sel.profile.name, "bold"), f" ({how}) - {sel.profile.title}"
        )
    ]
    if sel.gpu_notice:
        lines.append(Text.assemble(("!! ", "bold yellow"), (sel.gpu_notice, "bold")))
    for warning in sel.warnings:
        lines.append(Text.assemble(("!! warning: ", "bold yellow"), warning))
    lines.append(Text.assemble(("Evidence", "bold"), f" ({plan.facts_source})"))
    lines += [f"  {line}" for line in sel.evidence]
    return _lines(*lines)


def candidate_label(candidate: Candidate, chosen: str) -> Text:
    """One profile in the chooser: its verdict word, name, preference and every reason."""
    if candidate.profile == chosen:
        mark = ("CHOSEN  ", "bold green" if candidate.matches else "bold yellow")
    else:
        mark = ("MATCHES ", "green") if candidate.matches else ("REJECTED", "red")
    head = Text.assemble(mark, f" {candidate.profile} (preference {candidate.preference})")
    return _lines(head, *(f"         {reason}" for reason in candidate.reasons))


def model_summary(model: ModelInfo) -> Text:
    m = model
    head = Text.assemble(
        ("Model ", "bold"),
        f"{m.name} ({m.format}, {m.model_type}): {m.parameter_count / 1e9:.2f}B parameters "
        f"({m.parameter_count_source}), {m.num_layers} layers, {m.num_attention_heads} heads, "
        f"{m.num_kv_heads} KV heads x {m.head_dim}, stored as {m.checkpoint_dtype}"
        + (f", quantised {m.quantization}" if m.quantization else ""),
    )
    return _lines(head, *(f"  assumption: {a}" for a in m.assumptions))


def fit_report(fit: FitReport, *, forced: bool = False) -> Text:
    layout = f" {fit.layout.describe()}" if fit.layout is not None else ""
    lines: list[Text | str] = [Text.assemble(("Fit", "bold"), f" under {fit.profile}:{layout}")]
    lines += [f"  note: {note}" for note in fit.notes]
    if fit.estimate is not None:
        unit = "per GPU" if fit.layout and fit.layout.device == "gpu" else "per host"
        lines += _estimate(fit.estimate, unit)
    lines += [Text.assemble(("  problem: ", "red"), p) for p in fit.problems]
    if fit.fits:
        verdict = ("FITS", "bold green")
    elif forced:
        verdict = ("DOES NOT FIT (accepted by you: the deploy is forced)", "bold yellow")
    else:
        verdict = ("DOES NOT FIT", "bold red")
    lines.append(Text.assemble("  verdict: ", verdict))
    if not fit.fits:
        if fit.alternatives:
            lines.append(Text("  Would fit instead:", "bold"))
            for alt in fit.alternatives:
                e = alt.estimate
                lines.append(
                    f"    - {alt.what}: {alt.detail}; needs {gib(e.required_per_device)} of "
                    f"{gib(e.budget_per_device)} per device at context {e.context}"
                )
        else:
            lines.append("  Nothing among the profiles and quantisations would fit this model.")
    return _lines(*lines)


def _estimate(est: Estimate, unit: str) -> list[Text | str]:
    kib = est.kv_bytes_per_token / 1024
    lines: list[Text | str] = [
        f"  precision {est.precision}, context {est.context}, {est.devices} device(s), {unit}:",
        f"    weights          {gib(est.weights_per_device):>12}   (total {gib(est.weights_bytes)})",
        f"    KV cache         {gib(est.kv_per_device):>12}   ({kib:g} KiB/token before sharding)",
        f"    engine overhead  {gib(est.overhead_per_device):>12}",
        f"    needed           {gib(est.required_per_device):>12}   of {gib(est.budget_per_device)} budget",
    ]
    if est.max_context == 0:
        lines.append("  the weights and engine overhead alone exceed the budget: no context fits")
    else:
        lines.append(
            f"  largest context that fits: {est.max_context}; "
            f"full-context sequences at once: {est.sequences_at_context}"
        )
    return lines


def misfit_reasons(plan: Plan) -> list[str]:
    """Why overriding needs a confirmation: the profile does not match, or the model does not fit."""
    reasons = list(plan.selection.warnings)
    if plan.fit is not None and not plan.fit.fits:
        reasons += [f"the model does not fit: {p}" for p in plan.fit.problems] or [
            f"the model does not fit profile {plan.selection.profile.name} (see the fit report)"
        ]
    return reasons


# --- bundle ---------------------------------------------------------------------------------


def progress_line(
    done_bytes: int, total_bytes: int | None, done_items: int, total_items: int | None
) -> str:
    of_bytes = f" of {size(total_bytes)}" if total_bytes is not None else ""
    of_items = f" of {total_items}" if total_items is not None else ""
    return f"{size(done_bytes)}{of_bytes}, {done_items}{of_items} files"


def bundle_summary(v: VerifiedBundle) -> Text:
    total = sum(r.length for r in v.records)
    payload = v.payload
    previous = (
        "first version accepted here"
        if v.previous_version is None
        else f"previous version accepted here: {v.previous_version}"
    )
    lines: list[Text | str] = [
        Text.assemble(
            ("VERIFIED ", "bold green"),
            (f"{v.name} ({v.channel}) version {v.version}", "bold"),
            f": {len(v.records)} files, {size(total)}",
        ),
        f"  expires {v.expires.isoformat()}; {previous}",
        f"  signed by {len(v.signers)} trusted key(s) of root version {v.root_version}:",
        *(f"    {keyid}" for keyid in v.signers),
        f"  content digest {v.content_digest}",
        f"  built {payload.created} by {payload.created_by}",
    ]
    if payload.profiles:
        lines.append(f"  for profiles: {', '.join(payload.profiles)}")
    if payload.model is None:
        lines.append(Text.assemble(("  !! ", "bold yellow"), "the bundle carries no model"))
    lines += bundle_models(v)
    for artifact in payload.artifacts:
        lines.append(
            f"Artifact {artifact.name} from {artifact.url}, licence "
            f"{artifact.licence or 'not stated'}, sha256 {artifact.sha256[:16]}..."
        )
    if payload.wheels is not None:
        wheels = payload.wheels
        lines.append(
            f"Wheels for Python {wheels.python} {', '.join(wheels.platforms)}: "
            f"{len(wheels.files)} files"
        )
    if payload.gateway is not None:
        gateway = payload.gateway
        lines.append(
            f"Gateway wheels for Python {gateway.python}: {len(gateway.files)} files "
            f"({len(gateway.requirements)} pinned, {len(gateway.no_deps)} without dependencies)"
        )
    return _lines(*lines)


# The TUI takes no policy file: the deploy it starts applies the default site policy.
TUI_POLICY = "the default site policy (intended use commercial; `appliance deploy --policy FILE` takes the site's)"


def bundle_models(v: VerifiedBundle) -> list[Text | str]:
    """The bundle's base and adapters with provider, licences, data sources and findings
    (``appliance bundle inspect``'s lines: ``compliance.inventory.inventory_lines``)."""
    from appliance.bundle.payload_inventory import payload_inventory, reuse_summary
    from appliance.compliance.inventory import inventory_lines

    lines: list[Text | str] = []
    reuse = reuse_summary(v.payload, v.records)
    lines += reuse.lines() if reuse is not None else []
    rows = payload_inventory(v.payload, v.records)
    if v.payload.adapters:
        lines.append(
            Text.assemble(("Models", "bold"), f" (adapters' findings under {TUI_POLICY}):")
        )
    elif rows:
        lines.append(Text("Models", "bold"))
    lines += [_finding_style(line) for line in inventory_lines(rows, indent="  ")]
    return lines


def deployed_models(v: VerifiedBundle) -> Text:
    """What the deploy laid down: the base and each adapter, briefly (the Done step)."""
    from appliance.bundle.payload_inventory import payload_inventory
    from appliance.compliance.inventory import inventory_lines

    rows = payload_inventory(v.payload, v.records)
    head = Text.assemble(("Deployed", "bold"), f": bundle {v.name} version {v.version}")
    if not rows:
        return _lines(head, "  no model")
    return _lines(
        head, *(_finding_style(x) for x in inventory_lines(rows, indent="  ", brief=True))
    )


def _finding_style(line: str) -> Text | str:
    """A refusal or warning line keeps its word; colour only repeats it."""
    stripped = line.lstrip()
    for word, style in (("REFUSE ", "bold red"), ("WARN ", "bold yellow")):
        if stripped.startswith(word):
            pad = line[: len(line) - len(stripped)]
            return Text.assemble(pad, (word.strip(), style), " ", stripped[len(word) :])
    return line


# --- plan review, deploy, done ----------------------------------------------------------------


ENGINE_NAMES: dict[str, str] = {"vllm": "vLLM", "llamacpp": "llama.cpp"}


def host_review(result: HostResult, *, forced: bool, engine: str) -> RenderableType:
    """One host in the plan review: its preflights, the engine command planned for it
    (``engine``: the profile's engine kind), then the dry-run difference."""
    parts: list[RenderableType] = []
    if result.preflights:
        parts += [Text("Preflights", "bold"), preflight_table(result.preflights, forced=forced)]
    if result.command is not None:
        parts.append(engine_command(result.command, engine=ENGINE_NAMES.get(engine, engine)))
    if parts and result.changes:
        parts.append(Text("Changes", "bold"))
    return host_changes(result, before=parts)


def host_changes(
    result: HostResult, *, limit: int = 200, before: Sequence[RenderableType] = ()
) -> RenderableType:
    """The dry-run difference for one host, as ``appliance deploy --dry-run`` prints it;
    ``before`` goes between the host's line and its changes."""
    if not result.changes:
        return Group(
            Text.assemble(
                (f"{result.host}: ", "bold"), ("OK", "bold green"), " up to date, nothing to change"
            ),
            *before,
        )
    head = Text.assemble((f"{result.host}: ", "bold"), f"{len(result.changes)} change(s)")
    # A grid keeps long paths folded under the target column, the kinds readable at 80 columns.
    table = Table.grid(padding=(0, 1), pad_edge=True)
    table.add_column(no_wrap=True, min_width=14)
    table.add_column(overflow="fold")
    shown = result.changes[:limit]
    for change in shown:
        table.add_row(change.kind, Text.assemble(change.target, (f"  ({change.detail})", "dim")))
    parts: list[RenderableType] = [head, *before, table]
    if len(result.changes) > len(shown):
        parts.append(Text(f"  ... and {len(result.changes) - len(shown)} more"))
    return Group(*parts)


# A preflight's verdict, as ``appliance plan`` words it (colour only repeats the word).
PREFLIGHT_STYLES: dict[str, str] = {
    "pass": "bold green",
    "fail": "bold red",
    "warn": "bold yellow",
    "skip": "dim",
}


def preflight_word(row: Preflight, *, forced: bool) -> Text:
    """PASS, FAIL, WARN, SKIP; a failure the operator's force accepts is FAIL (forced)."""
    if row.failed and forced and row.forceable:
        return Text("FAIL (forced)", "bold yellow")
    return Text(row.status.upper(), PREFLIGHT_STYLES[row.status])


def preflight_table(rows: Sequence[Preflight], *, forced: bool) -> RenderableType:
    """One host's preflights, one row per check: verdict, check, what was found, what was
    expected (not for a skipped check: why it does not apply is what was found) and, unless
    it passed, what to do (``appliance plan``'s preflight lines)."""
    table = Table.grid(padding=(0, 1), pad_edge=True)
    table.add_column(no_wrap=True, min_width=5)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for row in rows:
        # A skipped check says why it does not apply; its "expected" is only "n/a" (omitted).
        expected = "" if row.status == "skip" else f"  (expected {row.expected})"
        detail = Text.assemble(row.found, (expected, "dim"))
        if row.action and row.status != "pass":
            detail.append_text(Text.assemble("\n", ("what to do: ", "bold"), row.action))
        table.add_row(preflight_word(row, forced=forced), row.name, detail)
    return table


def blocking_preflights(results: Sequence[HostResult], *, forced: bool) -> list[Preflight]:
    """The failed rows of every host that a deploy would refuse on (``force`` accepts the
    forceable ones), hosts in order: while there is one, the deploy is not offered."""
    from appliance.plan.preflight import failures

    return list(failures([row for r in results for row in r.preflights], force=forced))


def preflight_summary(results: Sequence[HostResult], *, forced: bool) -> Text:
    """One line over every host's preflights: the failures that block the deploy by name,
    else how many passed, warned and were skipped."""
    blocking = blocking_preflights(results, forced=forced)
    if blocking:
        named = ", ".join(f"{r.host} {r.name}" for r in blocking)
        return Text.assemble(
            ("FAIL ", "bold red"),
            f"{len(blocking)} preflight check(s) failed: {named}. The deploy is blocked: "
            "fix each on its host (what to do: below), then Next runs the dry run again.",
        )
    rows = [row for r in results for row in r.preflights]
    counts = {s: sum(1 for row in rows if row.status == s) for s in ("pass", "warn", "skip")}
    accepted = sum(1 for row in rows if row.failed)
    return Text.assemble(
        ("OK " if not counts["warn"] and not accepted else "!! ", "bold green" if not
         counts["warn"] and not accepted else "bold yellow"),
        f"preflights: {counts['pass']} passed, {counts['warn']} warning(s), "
        f"{counts['skip']} skipped" + (f", {accepted} failed (accepted: forced)" if accepted else ""),
    )  # fmt: skip


def engine_command(command: NodeCommand, *, engine: str = "") -> RenderableType:
    """The engine command line as a shell would run it: the environment, the program, then
    each option with its values on a line of its own (``\\`` continues it), so a long vLLM
    command stays readable at 80 columns; a line wrapped by the screen keeps its indent."""
    role = command.role if command.role == "single" else f"{command.role}, node rank {command.rank}"
    head = Text.assemble(
        ("Engine command", "bold"), f" ({engine or 'engine'}, {role}) on {command.host}:"
    )
    rows: list[tuple[int, str]] = []
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(command.env.items()))
    groups: list[list[str]] = [[]]
    for arg in command.argv:
        if arg.startswith("--") and groups[-1]:
            groups.append([])
        groups[-1].append(shlex.quote(arg))
    if env:
        rows.append((2, f"env {env} \\"))
    for i, group in enumerate(groups):
        more = " \\" if i < len(groups) - 1 else ""
        rows.append((4 if i else 2, " ".join(group) + more))
    return Group(head, *(Padding(Text(line), (0, 0, 0, indent)) for indent, line in rows))


def status_word(status: str) -> Text:
    word, style = STATUS_WORDS.get(status, (status.upper(), ""))
    return Text(word, style)


def host_outcome(result: HostResult) -> Text:
    return Text.assemble(
        (f"{result.host}: ", "bold"),
        status_word(result.status),
        f" {result.status}: {result.message}",
    )


def host_access(result: HostResult, address: str, model_endpoint: str | None = None) -> list[str]:
    """Where a deployed host is reached: the gateway (with a site file) or the loopback server."""
    loopback = model_endpoint or f"http://127.0.0.1:{result.port}/v1 on {result.host}"
    if result.gateway_port is None:
        return [] if result.port is None else [f"  endpoint: {loopback} (the host's loopback only)"]
    lines = [f"  endpoint: https://{address}:{result.gateway_port}/v1 (the gateway: TLS, token)"]
    lines.append(
        "  firewall loaded (the release's nftables ruleset)"
        if result.firewall
        else "  !! no firewall loaded"
    )
    if result.port is not None:
        lines.append(f"  model server: {loopback}")
    if result.keycloak is not None:
        from appliance.deploy.keycloak_layer import secrets_lines

        lines += [f"  {line}" for line in secrets_lines(result.keycloak)]
    return lines


def summary_line(results: Sequence[HostResult]) -> Text:
    failed = [r for r in results if r.status in ("failed", "rolled-back")]
    if failed:
        return Text.assemble(
            ("FAIL ", "bold red"),
            f"{len(failed)} of {len(results)} host(s) failed: {', '.join(r.host for r in failed)}",
        )
    return Text.assemble(("OK ", "bold green"), f"{len(results)} host(s) serving")
