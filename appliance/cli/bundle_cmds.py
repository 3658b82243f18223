"""``appliance keys|trust|bundle`` commands: parse, call the core, render events and results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from appliance.cli.argtypes import positive_int
from appliance.events import Event, Finished, Progress, Started, Warned, drain
from appliance.exitcodes import ExitCode

Handler = Callable[[argparse.Namespace], int]

T = TypeVar("T")


# --- shared options ------------------------------------------------------------------


def _passphrase_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--passphrase-file", type=Path, help="read the key passphrase from the first line of FILE"
    )
    group.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="read the key passphrase from environment variable VAR",
    )
    group.add_argument("--ask-passphrase", action="store_true", help="prompt for the passphrase")


def _trust_options(parser: argparse.ArgumentParser) -> None:
    """What every command that accepts a bundle on site needs: the root, the state, the overrides."""
    parser.add_argument(
        "--trust", type=Path, required=True, help="the site's trusted root (root.json)"
    )
    parser.add_argument(
        "--state", type=Path, help="directory remembering accepted versions (rollback protection)"
    )
    parser.add_argument(
        "--allow-downgrade", action="store_true", help="accept an older version (audited)"
    )
    parser.add_argument("--allow-version-jump", action="store_true", help=argparse.SUPPRESS)


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> bytes | None:
    from appliance.bundle.keys import read_passphrase

    return read_passphrase(
        file=args.passphrase_file, env=args.passphrase_env, ask=args.ask_passphrase, confirm=confirm
    )


def _expires(text: str) -> datetime:
    from appliance.bundle.trust import parse_duration

    return (datetime.now(UTC) + parse_duration(text)).replace(microsecond=0)


def run_with_progress(gen: Generator[Event, None, T], *, quiet: bool) -> T:
    """Drain an operation, showing progress on stderr for a person (not in --json mode)."""
    if quiet or not sys.stderr.isatty():

        def plain(event: Event) -> None:
            if not quiet and isinstance(event, Warned | Finished):
                print(f"appliance: {event.message}", file=sys.stderr)

        return drain(gen, plain)
    from rich.progress import BarColumn, TextColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def show(event: Event) -> None:
            if isinstance(event, Started):
                tasks[event.operation] = bar.add_task(
                    event.operation, total=event.total_bytes, detail=""
                )
            elif isinstance(event, Progress) and event.host is not None:
                # Per-host steps (deploy): one line per host, steps done of total, the last step.
                if event.host not in tasks:
                    tasks[event.host] = bar.add_task(event.host, total=event.total_items, detail="")
                done = (
                    f"{event.done_items}/{event.total_items}"
                    if event.total_items
                    else f"{event.done_items}"
                )
                bar.update(tasks[event.host], completed=event.done_items, total=event.total_items,
                           detail=f"{done} {event.item or ''}"[:60])  # fmt: skip
            elif isinstance(event, Progress) and event.operation in tasks:
                bar.update(tasks[event.operation], completed=event.done_bytes, total=event.total_bytes,
                           detail=_amount(event.done_bytes, event.total_bytes))  # fmt: skip
            elif isinstance(event, Warned | Finished):
                bar.console.print(f"appliance: {event.message}", highlight=False, markup=False)

        return drain(gen, show)


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _amount(done: int, total: int | None) -> str:
    return f"{_size(done)}/{_size(total)}" if total else _size(done)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# --- keys ------------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from appliance.bundle.keys import generate_key, load_signer
    from appliance.bundle.trust import new_root, sign_metadata, to_bytes, write_atomic
    from appliance.errors import InputError
    from appliance.output_paths import writable_directory

    writable_directory(args.out, "--out")
    root_path = args.out / "root.json"
    if args.expires is not None and os.path.lexists(root_path):
        raise InputError(
            f"--expires sets the expiry of a new one-key trusted root, but {root_path} already "
            "exists and is left as it is",
            hint="Drop --expires, or generate the key into another --out directory.",
        )
    passphrase = _passphrase(args, confirm=True)
    pair = generate_key(args.out, args.name, passphrase)
    made_root = False
    if not root_path.exists():
        # The simple path: one key is enough to sign and to verify with these files.
        from appliance.bundle.keys import load_public_key

        key, _ = load_public_key(pair.public_path)
        root = new_root([key], 1, _expires(args.expires or "1y"))
        sign_metadata(root, load_signer(pair.private_path, passphrase))
        write_atomic(root_path, to_bytes(root))
        made_root = True
    result = {
        "keyid": pair.keyid,
        "private_key": str(pair.private_path),
        "public_key": str(pair.public_path),
        "trusted_root": str(root_path) if made_root else None,
    }
    if args.json:
        _emit_json(result)
    else:
        print(
            f"private key  {pair.private_path} (mode 0600{', passphrase-protected' if passphrase else ''}; keep it offline)"
        )
        print(f"public key   {pair.public_path}  keyid {pair.keyid}")
        if made_root:
            print(
                f"trusted root {root_path} (this key alone, threshold 1): copy it to the site, verify with --trust"
            )
        else:
            print(
                f"{root_path} exists and was left as it is; add this key with `appliance trust init|rotate`"
            )
    return ExitCode.OK


# --- trust -----------------------------------------------------------------------------


def _public_keys(paths: list[Path]) -> list[Any]:
    from appliance.bundle.keys import load_public_key

    return [load_public_key(p)[0] for p in paths]


def cmd_trust_init(args: argparse.Namespace) -> int:
    from appliance.bundle.trust import new_root, to_bytes, write_atomic
    from appliance.output_paths import new_file

    new_file(args.out, "--out")  # never overwrites a trusted root
    root = new_root(_public_keys(args.key), args.threshold, _expires(args.expires))
    write_atomic(args.out, to_bytes(root))
    print(
        f"wrote {args.out} (version 1, {len(args.key)} keys, threshold {args.threshold}, unsigned): "
        f"now {args.threshold} of the key holders run `appliance trust sign {args.out} --key KEY`",
        file=sys.stderr,
    )
    return ExitCode.OK


def cmd_trust_rotate(args: argparse.Namespace) -> int:
    from appliance.bundle.trust import load_trusted_root, rotate_root, to_bytes, write_atomic
    from appliance.output_paths import new_file

    new_file(args.out, "--out")  # never overwrites a trusted root
    old = load_trusted_root(args.from_root)
    new = rotate_root(old, _public_keys(args.key), args.threshold, _expires(args.expires))
    write_atomic(args.out, to_bytes(new))
    print(
        f"wrote {args.out} (version {new.signed.version}): it needs signatures from {old.signed.roles['root'].threshold} "
        f"holder(s) of the current root keys AND {args.threshold} of the new keys (`appliance trust sign`); "
        f"ship it in bundles as metadata/root/{new.signed.version}.root.json",
        file=sys.stderr,
    )
    return ExitCode.OK


def cmd_trust_sign(args: argparse.Namespace) -> int:
    from appliance.bundle.format import MAX_ROOT_BYTES
    from appliance.bundle.keys import load_signer
    from appliance.bundle.trust import (
        parse_root,
        read_bounded,
        sign_metadata,
        to_bytes,
        write_atomic,
    )
    from appliance.output_paths import replaced_file

    replaced_file(args.root, "root")  # signed in place
    root = parse_root(read_bounded(args.root, MAX_ROOT_BYTES, "root"), str(args.root))
    signer = load_signer(args.key, _passphrase(args))
    sign_metadata(root, signer)
    write_atomic(args.root, to_bytes(root))
    print(
        f"signed {args.root} with key {signer.public_key.keyid} ({len(root.signatures)} signature(s) now)",
        file=sys.stderr,
    )
    return ExitCode.OK


def cmd_trust_show(args: argparse.Namespace) -> int:
    from appliance.bundle.format import MAX_ROOT_BYTES
    from appliance.bundle.trust import parse_root, read_bounded

    root = parse_root(read_bounded(args.root, MAX_ROOT_BYTES, "root"), str(args.root)).signed
    data = {
        "version": root.version,
        "expires": root.expires.isoformat(),
        "roles": {
            r: {"threshold": root.roles[r].threshold, "keyids": root.roles[r].keyids}
            for r in ("root", "targets")
        },
    }
    if args.json:
        _emit_json(data)
    else:
        print(f"trusted root version {root.version}, expires {root.expires.isoformat()}")
        for role in ("root", "targets"):
            spec = root.roles[role]
            print(
                f"  {role}: {spec.threshold} of {len(spec.keyids)} keys: {', '.join(k[:16] for k in spec.keyids)}"
            )
    return ExitCode.OK


def cmd_trust_reanchor(args: argparse.Namespace) -> int:
    """Start a site's kept chain over from a new anchor, on purpose, audited."""
    import getpass

    from appliance.bundle.site.state import AUDIT, TrustState
    from appliance.bundle.trust import check_not_expired, load_trusted_root, signed_digest
    from appliance.errors import InputError

    if not args.state.is_dir() or args.state.is_symlink():
        raise InputError(
            f"{args.state} is not a state directory; nothing to re-anchor",
            hint="Give the directory passed as --state to `bundle verify|install` and `deploy`.",
        )
    anchor = load_trusted_root(args.trust)
    check_not_expired(anchor.signed.expires, f"the new anchor {args.trust}")
    state = TrustState(args.state)
    if not args.yes:
        kept = sorted(name for name in ("root.json", "roots") if (args.state / name).exists())
        print(
            f"re-anchor {args.state} to {args.trust} (version {anchor.signed.version}, "
            f"{signed_digest(anchor)[:16]}...): kept roots {', '.join(kept) or 'none'} move into a dated "
            "backup inside the state; accepted versions stay",
            file=sys.stderr,
        )
        if args.json or not sys.stdin.isatty():
            raise InputError("re-anchoring changes what this site trusts: confirm with --yes")
        if input("Re-anchor? [y/N] ").strip().lower() not in ("y", "yes"):
            print("appliance: nothing changed", file=sys.stderr)
            return ExitCode.OK
    done = state.reanchor(anchor, str(args.trust), getpass.getuser())
    result = {
        "reanchored": True,
        "state": str(args.state),
        "anchor": str(args.trust),
        "anchor_version": done.anchor_version,
        "anchor_digest": done.anchor_digest,
        "moved": list(done.moved),
        "previous_versions": list(done.previous_versions),
        "backup": None if done.backup is None else str(done.backup),
        "audit": str(args.state / AUDIT),
    }
    if args.json:
        _emit_json(result)
    else:
        moved = (
            f"moved {', '.join(done.moved)} into {done.backup}"
            if done.backup is not None
            else "no kept roots to move"
        )
        print(
            f"re-anchored {args.state} to {args.trust} (version {done.anchor_version}): {moved}; "
            f"recorded in {args.state / AUDIT}"
        )
    return ExitCode.OK


# --- bundle ----------------------------------------------------------------------------


_RECIPE_OWNS = ("--model", "--name", "--channel", "--part-size", "--profile", "--licence")
_RECIPE_OVERRIDES = ("--version", "--expires")


def _flag_values(args: argparse.Namespace, flags: tuple[str, ...]) -> dict[str, Any]:
    values = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in flags}
    return {flag: value for flag, value in values.items() if value is not None}


def _recipe_with_overrides(args: argparse.Namespace) -> Any:
    """``--recipe`` plus flags: --version and --expires override the recipe (said on
    stderr); the flags that describe the content are refused (the recipe says it)."""
    from datetime import UTC, datetime

    from appliance.bundle.connected.recipe import load_recipe, parse_expiry
    from appliance.errors import InputError

    if refused := _flag_values(args, _RECIPE_OWNS):
        raise InputError(
            f"{', '.join(refused)} cannot be combined with --recipe: the recipe {args.recipe} "
            "says what goes into the bundle",
            hint="Edit the recipe, or build without --recipe from --model, --name and --version.",
        )
    recipe = load_recipe(args.recipe)
    overrides = _flag_values(args, _RECIPE_OVERRIDES)
    from appliance.bundle.format import MAX_VERSION

    if overrides.get("--version", 0) > MAX_VERSION:
        raise InputError(f"--version must be at most {MAX_VERSION}; found {args.version}")
    if "--expires" in overrides:
        parse_expiry(overrides["--expires"], datetime.now(UTC))  # refused here if malformed
    for flag, value in overrides.items():
        field = flag[2:]
        print(
            f"appliance: {flag} {value} overrides the recipe's {field} {getattr(recipe, field)}",
            file=sys.stderr,
        )
    return recipe.model_copy(update={flag[2:]: value for flag, value in overrides.items()})


def cmd_bundle_build(args: argparse.Namespace) -> int:
    from appliance.bundle.connected.build import build_bundle, recipe_from_args
    from appliance.errors import InputError
    from appliance.output_paths import new_directory

    new_directory(args.out, "--out")  # before any copying or hashing
    if args.recipe is not None:
        recipe = _recipe_with_overrides(args)
    else:
        missing = [
            flag
            for flag, value in (
                ("--model", args.model),
                ("--name", args.name),
                ("--version", args.version),
            )
            if value is None
        ]
        if missing:
            raise InputError(
                f"bundle build needs --recipe FILE, or {', '.join(missing)} (with --model)"
            )
        recipe = recipe_from_args(
            args.model, args.name, args.version, args.channel or "stable", args.expires or "90d",
            args.part_size, args.profile or [], licence=args.licence or "NOASSERTION",
        )  # fmt: skip
    out = run_with_progress(build_bundle(recipe, args.out), quiet=args.json)
    if args.json:
        _emit_json(inspect_data(out))
    else:
        print(
            f"built {out} (unsigned): next `appliance bundle sign {out} --key KEY` by each signer"
        )
    return ExitCode.OK


def cmd_bundle_resolve(args: argparse.Namespace) -> int:
    """What the recipe's wheel set resolves to for its target, without downloading it."""
    from appliance.bundle.connected.recipe import load_recipe
    from appliance.bundle.connected.resolve import resolve_wheels
    from appliance.errors import InputError

    recipe = load_recipe(args.recipe)
    if recipe.wheels is None:
        raise InputError(
            f"{args.recipe} has no `wheels`: there is no wheel set to resolve",
            hint="Add a wheels: section (bundles/example-gpu.yaml shows one).",
        )
    resolved = resolve_wheels(recipe.wheels, python=str(args.python or sys.executable))
    torch = None if resolved.torch is None else resolved.torch.model_dump()
    if args.json:
        _emit_json(
            {"pins": resolved.pins, "torch": torch, "downloaded_bytes": resolved.downloaded_bytes}
        )
        return ExitCode.OK
    tags = recipe.wheels.platforms
    where = tags[0] + (f" (and {len(tags) - 1} more platform tags)" if len(tags) > 1 else "")
    print(
        f"{args.recipe}: the wheel set resolves for python {recipe.wheels.python} on {where} "
        f"to {len(resolved.pins)} distributions:"
    )
    for pin in resolved.pins:
        print(f"  {pin}")
    if resolved.torch is None:
        print("torch: none")
    else:
        build = resolved.torch
        cuda = f"CUDA {build.cuda}" if build.cuda else "no CUDA"
        print(f"torch: {build.version} ({build.variant} build, {cuda})")
    return ExitCode.OK


def _bundle_metadata_writable(bundle: Path) -> None:
    """sign and add-signatures rewrite metadata/targets.json in place."""
    from appliance.bundle.manifest import targets_path
    from appliance.output_paths import replaced_file

    replaced_file(targets_path(bundle), "bundle")


def cmd_bundle_sign(args: argparse.Namespace) -> int:
    from appliance.bundle.format import FILES_DIR
    from appliance.bundle.keys import load_signer
    from appliance.bundle.manifest import bundle_contents, read_targets, sign_bundle
    from appliance.bundle.site import contents

    _bundle_metadata_writable(args.bundle)  # before re-hashing every file
    signer = load_signer(args.key, _passphrase(args))
    if not args.no_content_check:
        # A signer approves bytes, not just metadata: check the files match first.
        _, records = bundle_contents(read_targets(args.bundle))
        contents.check_file_set(args.bundle / FILES_DIR, records)
        run_with_progress(contents.verify_contents(args.bundle / FILES_DIR, records), quiet=False)
    keyid = sign_bundle(args.bundle, signer)
    print(f"signed {args.bundle} with key {keyid}", file=sys.stderr)
    return ExitCode.OK


def cmd_bundle_add_signatures(args: argparse.Namespace) -> int:
    from appliance.bundle.manifest import add_signatures

    _bundle_metadata_writable(args.bundle)
    added = add_signatures(args.bundle, args.manifests)
    print(
        f"added {len(added)} signature(s) to {args.bundle}: {', '.join(k[:16] for k in added) or 'none new'}",
        file=sys.stderr,
    )
    return ExitCode.OK


def inspect_data(bundle: Path, policy: Any = None) -> dict[str, Any]:
    from appliance.bundle.manifest import bundle_contents, content_digest, read_targets
    from appliance.bundle.payload_inventory import payload_inventory, reuse_summary
    from appliance.compliance.inventory import inventory_json

    md = read_targets(bundle)
    payload, records = bundle_contents(md)
    reuse = reuse_summary(payload, records)
    return {
        "name": payload.name,
        "channel": payload.channel,
        "version": md.signed.version,
        "expires": md.signed.expires.isoformat(),
        "created": payload.created,
        "created_by": payload.created_by,
        "content_digest": content_digest(md),
        "signatures": sorted(md.signatures),
        "profiles": payload.profiles,
        "model": None if payload.model is None else payload.model.model_dump(mode="json"),
        "adapters": [a.model_dump(mode="json") for a in payload.adapters],
        "inventory": inventory_json(payload_inventory(payload, records, policy)),
        "reuses": None
        if payload.reuses is None or reuse is None
        else payload.reuses.model_dump(mode="json")
        | {"reused_bytes": reuse.reused_bytes, "carried_bytes": reuse.carried_bytes},
        "wheels": None if payload.wheels is None else payload.wheels.model_dump(mode="json"),
        "gateway": None if payload.gateway is None else payload.gateway.model_dump(mode="json"),
        "installer": None
        if payload.installer is None
        else payload.installer.model_dump(mode="json"),
        "artifacts": [a.model_dump(mode="json") for a in payload.artifacts],
        "media": {"part_size": payload.media.part_size, "parts": len(payload.media.parts)},
        "files": [{"path": r.path, "length": r.length, "sha256": r.sha256} for r in records],
        "total_bytes": sum(r.length for r in records),
        "verified": False,
    }


def _site_policy(args: argparse.Namespace) -> tuple[Any, str]:
    """The site policy (--policy FILE) and how to name it; the default one without it."""
    from appliance.compliance.policy import DEFAULT_POLICY, load_policy

    if getattr(args, "policy", None) is None:
        return DEFAULT_POLICY, "the default policy (no --policy given)"
    return load_policy(args.policy), str(args.policy)


def cmd_bundle_inspect(args: argparse.Namespace) -> int:
    from appliance.bundle.manifest import bundle_contents, read_targets
    from appliance.bundle.payload_inventory import payload_inventory, reuse_summary
    from appliance.compliance.inventory import inventory_lines

    policy, policy_name = _site_policy(args)
    data = inspect_data(args.bundle, policy)
    if args.json:
        _emit_json(data)
        return ExitCode.OK
    payload, records = bundle_contents(read_targets(args.bundle))
    print(
        f"{data['name']} ({data['channel']}) version {data['version']}, expires {data['expires']}"
    )
    print(
        f"  built {data['created']} by {data['created_by']}; content digest {data['content_digest']}"
    )
    print(
        "  NOT VERIFIED: inspect reads the manifest only; run `appliance bundle verify` before trusting it"
    )
    print(
        f"  signatures: {len(data['signatures'])} ({', '.join(k[:16] for k in data['signatures']) or 'none'})"
    )
    reuse = reuse_summary(payload, records)
    for line in reuse.lines() if reuse is not None else []:
        print(f"  {line}")
    rows = payload_inventory(payload, records, policy)
    if payload.model is None:
        print("  model: none carried")
    if payload.adapters:
        print(f"  adapters' findings under the site policy: {policy_name}")
    for line in inventory_lines(rows, indent="  "):
        print(line)
    for artifact in data["artifacts"]:
        print(
            f"  artifact {artifact['name']} from {artifact['url']} sha256 {artifact['sha256'][:16]}... licence {artifact.get('licence') or 'not stated'}"
        )
    if data["wheels"]:
        print(
            f"  wheels for Python {data['wheels']['python']} {', '.join(data['wheels']['platforms'])}: {len(data['wheels']['files'])} files"
        )
    gateway = data["gateway"]
    if gateway:
        no_deps = ", ".join(p.rsplit("/", 1)[-1] for p in gateway.get("no_deps", []))
        notes = "; ".join(f"{k}: {v}" for k, v in gateway["build_notes"].items())
        print(
            f"  gateway wheels for Python {gateway['python']}: {len(gateway['files'])} files, "
            f"{len(gateway['requirements'])} pinned requirements + {no_deps or 'nothing'} (--no-deps)"
            + (f"; {notes}" if notes else "")
        )
    installer = data["installer"]
    if installer:
        print(
            f"  installer (the appliance for the operator's machine, Python {installer['python']} "
            f"{', '.join(installer['platforms'])}): {', '.join(installer['requirements'])}, "
            f"{len(installer['files'])} wheels; {installer['build_notes'].get('appliance-wheel', '')}"
        )
    print(
        f"  {len(data['files'])} files, {data['total_bytes']} bytes, {data['media']['parts']} media part(s) of {data['media']['part_size']} bytes"
    )
    return ExitCode.OK


def cmd_bundle_export_records(args: argparse.Namespace) -> int:
    from appliance.bundle.manifest import bundle_contents, read_targets
    from appliance.bundle.payload_inventory import payload_inventory
    from appliance.compliance.record_export import export_files, write_export
    from appliance.output_paths import new_or_empty_directory

    new_or_empty_directory(args.out, "--out")
    policy, policy_name = _site_policy(args)
    md = read_targets(args.bundle)
    payload, records = bundle_contents(md)
    rows = payload_inventory(payload, records, policy)
    files = export_files(
        rows,
        {a.name: a.record for a in payload.adapters},
        bundle=f"{payload.name} version {md.signed.version}",
        policy=policy,
        policy_source=policy_name,
    )
    written = write_export(files, args.out)
    missing = [a.name for a in payload.adapters if a.record is None]
    if args.json:
        _emit_json(
            {
                "directory": str(args.out),
                "bundle": payload.name,
                "policy": policy_name,
                "files": [{"path": w.path, "sha256": w.sha256, "bytes": w.size} for w in written],
                "without_record": missing,
                "verified": False,
            }
        )
        return ExitCode.OK
    print(
        f"Wrote {args.out}: {len(written)} files for {len(payload.adapters)} adapter(s) of {payload.name}"
    )
    for w in written:
        print(f"  {w.path}")
    for name in missing:
        print(
            f"  {name}: NO transparency record carried (finding record-missing; listed in the index)"
        )
    print(f"Findings under {policy_name}: see {args.out / '_index.md'}.")
    print(
        "NOT VERIFIED: the records were read from the bundle's manifest; run"
        " `appliance bundle verify` to check its signatures."
    )
    return ExitCode.OK


def _verify_options(args: argparse.Namespace) -> Any:
    from appliance.bundle.site.verify import VerifyOptions

    refuse_without_state(args, "--allow-downgrade", "--allow-version-jump")
    return VerifyOptions(
        allow_downgrade=args.allow_downgrade, allow_version_jump=args.allow_version_jump
    )


def refuse_without_state(args: argparse.Namespace, *flags: str) -> None:
    """Freshness is checked against --state only: these flags do nothing without it."""
    from appliance.errors import InputError

    given = [f for f in flags if getattr(args, f[2:].replace("-", "_"), False)]
    if given and args.state is None:
        raise InputError(
            f"{', '.join(given)} only applies with --state (the versions accepted before); "
            "without it no version is compared",
            hint="Add --state DIR, or drop the flag.",
        )


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from appliance.bundle.site.verify import verify_bundle

    verified = run_with_progress(
        verify_bundle(args.bundle, args.trust, args.state, _verify_options(args)), quiet=args.json
    )
    result = {
        "verified": True,
        "name": verified.name,
        "channel": verified.channel,
        "version": verified.version,
        "previous_version": verified.previous_version,
        "expires": verified.expires.isoformat(),
        "content_digest": verified.content_digest,
        "signers": list(verified.signers),
        "root_version": verified.root_version,
        "files": len(verified.records),
        "total_bytes": sum(r.length for r in verified.records),
    }
    if args.json:
        _emit_json(result)
    else:
        print(
            f"VERIFIED {verified.name} ({verified.channel}) version {verified.version}: {result['files']} files, "
            f"{result['total_bytes']} bytes, {len(verified.signers)} trusted signature(s), expires {result['expires']}"
        )
    return ExitCode.OK


def cmd_bundle_install(args: argparse.Namespace) -> int:
    from appliance.bundle.site.verify import install_bundle

    installed = run_with_progress(
        install_bundle(args.bundle, args.trust, args.dest, args.state, _verify_options(args)),
        quiet=args.json,
    )
    result = {
        "installed": True,
        "directory": str(installed.directory),
        "name": installed.name,
        "channel": installed.channel,
        "version": installed.version,
        "content_digest": installed.content_digest,
        "signers": list(installed.signers),
        "files": len(installed.records),
    }
    if args.json:
        _emit_json(result)
    else:
        print(
            f"INSTALLED {installed.name} version {installed.version} into {installed.directory} (read-only)"
        )
    return ExitCode.OK


def cmd_bundle_split(args: argparse.Namespace) -> int:
    from appliance.bundle.connected.recipe import parse_size
    from appliance.bundle.manifest import bundle_contents, read_targets
    from appliance.bundle.media.split import split_bundle
    from appliance.output_paths import writable_directory

    writable_directory(args.out, "--out")
    md = read_targets(args.bundle)
    payload, records = bundle_contents(md)
    part_size = parse_size(args.part_size) if args.part_size else None
    parts = run_with_progress(
        split_bundle(
            args.bundle,
            records,
            payload.media,
            payload.name,
            md.signed.version,
            args.out,
            part_size=part_size,
        ),
        quiet=False,
    )
    print(
        f"wrote {len(parts)} part(s) of at most {payload.media.part_size} bytes and metadata/ to {args.out}; "
        "copy metadata/ with every medium; on site: `appliance bundle join --trust ROOT --out DIR PARTS_DIR...`"
    )
    return ExitCode.OK


def cmd_bundle_join(args: argparse.Namespace) -> int:
    from appliance.bundle.format import METADATA_DIR
    from appliance.bundle.media.join import join_parts
    from appliance.bundle.site.verify import check_signed_manifest
    from appliance.errors import MediaPartError
    from appliance.output_paths import new_directory

    new_directory(args.out, "--out")  # before checking (hashing) any part
    source = next((d for d in args.parts if (d / METADATA_DIR).is_dir()), None)
    if source is None:
        raise MediaPartError(
            f"none of {', '.join(map(str, args.parts))} has a metadata/ directory",
            hint="Copy metadata/ from any medium of the set next to its parts.",
        )
    # The layout comes from the signed manifest: check its signatures before trusting it.
    checked = run_with_progress(
        check_signed_manifest(source, args.trust, args.state), quiet=args.json
    )
    out = run_with_progress(
        join_parts(
            args.parts, checked.payload.media, checked.payload.name, checked.version, checked.records,
            source / METADATA_DIR, args.out,
        ),
        quiet=args.json,
    )  # fmt: skip
    message = f"joined {checked.payload.name} version {checked.version} into {out}; next: `appliance bundle verify {out} --trust ...`"
    if args.json:
        _emit_json(
            {
                "joined": True,
                "directory": str(out),
                "name": checked.payload.name,
                "version": checked.version,
            }
        )
    else:
        print(message)
    return ExitCode.OK


# --- registration ----------------------------------------------------------------------


def _add_keys_generate(parent: Any) -> Handler:
    """`appliance keys generate`: its parser under ``parent``; returns its handler."""
    gen = parent.add_parser(
        "generate", help="create an Ed25519 key pair (and a one-key trusted root)"
    )
    gen.add_argument(
        "--out", type=Path, required=True, help="directory for NAME.key (0600) and NAME.pub.json"
    )
    gen.add_argument("--name", default="signer", help="key name (default: signer)")
    gen.add_argument(
        "--expires",
        help="expiry of the one-key trusted root made when --out has none (default 1y)",
    )
    gen.add_argument("--json", action="store_true")
    _passphrase_options(gen)
    return cmd_keys_generate


def _add_trust_init(parent: Any) -> Handler:
    """`appliance trust init`: its parser under ``parent``; returns its handler."""
    init = parent.add_parser(
        "init", help="a new trusted root from public keys and a threshold (unsigned)"
    )
    init.add_argument(
        "--key", type=Path, action="append", required=True, help="public key file (repeat)"
    )
    init.add_argument("--threshold", type=int, required=True)
    init.add_argument("--expires", default="1y")
    init.add_argument("--out", type=Path, required=True)
    return cmd_trust_init


def _add_trust_rotate(parent: Any) -> Handler:
    """`appliance trust rotate`: its parser under ``parent``; returns its handler."""
    rotate = parent.add_parser(
        "rotate", help="the next version of a trusted root, with new keys/threshold"
    )
    rotate.add_argument(
        "--from", dest="from_root", type=Path, required=True, help="the current trusted root"
    )
    rotate.add_argument("--key", type=Path, action="append", required=True)
    rotate.add_argument("--threshold", type=int, required=True)
    rotate.add_argument("--expires", default="1y")
    rotate.add_argument("--out", type=Path, required=True)
    return cmd_trust_rotate


def _add_trust_sign(parent: Any) -> Handler:
    """`appliance trust sign`: its parser under ``parent``; returns its handler."""
    tsign = parent.add_parser("sign", help="add a signature to a trusted root")
    tsign.add_argument("root", type=Path)
    tsign.add_argument("--key", type=Path, required=True, help="private key file")
    _passphrase_options(tsign)
    return cmd_trust_sign


def _add_trust_show(parent: Any) -> Handler:
    """`appliance trust show`: its parser under ``parent``; returns its handler."""
    show = parent.add_parser("show", help="show a trusted root")
    show.add_argument("root", type=Path)
    show.add_argument("--json", action="store_true")
    return cmd_trust_show


def _add_trust_reanchor(parent: Any) -> Handler:
    """`appliance trust reanchor`: its parser under ``parent``; returns its handler."""
    reanchor = parent.add_parser(
        "reanchor",
        help="on purpose (e.g. after a key compromise): start a state's kept roots over from a new anchor",
    )
    reanchor.add_argument(
        "--state", type=Path, required=True, help="the state directory to re-anchor"
    )
    reanchor.add_argument(
        "--trust", type=Path, required=True, help="the new anchor (a self-signed root.json)"
    )
    reanchor.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reanchor.add_argument("--json", action="store_true")
    return cmd_trust_reanchor


def _add_bundle_build(parent: Any) -> Handler:
    """`appliance bundle build`: its parser under ``parent``; returns its handler."""
    build = parent.add_parser("build", help="build an unsigned bundle from a model (or a recipe)")
    build.add_argument("--recipe", type=Path, help="recipe YAML (see bundles/)")
    build.add_argument("--model", type=Path, help="Hugging Face model directory or .gguf file")
    build.add_argument("--name", help="product name")
    build.add_argument(
        "--version",
        type=positive_int,
        help="bundle version (a whole number that only goes up); overrides the recipe's",
    )
    build.add_argument("--channel", help="release channel (default stable)")
    build.add_argument(
        "--expires",
        help="expiry: a duration (90d, 12w, 1y) or a date (default 90d); overrides the recipe's",
    )
    build.add_argument(
        "--part-size", help="media part size, e.g. 700M (default: 4 GiB - 1 MiB, FAT32-safe)"
    )
    build.add_argument(
        "--profile", action="append", help="hardware profile the bundle is for (repeat)"
    )
    build.add_argument("--licence", help="SPDX licence id of the model (default NOASSERTION)")
    build.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    build.add_argument("--json", action="store_true")
    return cmd_bundle_build


def _add_bundle_resolve(parent: Any) -> Handler:
    """`appliance bundle resolve`: its parser under ``parent``; returns its handler."""
    resolve = parent.add_parser(
        "resolve",
        help="show what a recipe's wheel set resolves to for its target (pip's dry run: "
        "metadata only, no wheels downloaded)",
    )
    resolve.add_argument("--recipe", type=Path, required=True, help="recipe YAML (see bundles/)")
    resolve.add_argument(
        "--python",
        type=Path,
        help="the interpreter whose pip resolves (pip 25.3 or newer; default: this one)",
    )
    resolve.add_argument("--json", action="store_true")
    return cmd_bundle_resolve


def _add_bundle_sign(parent: Any) -> Handler:
    """`appliance bundle sign`: its parser under ``parent``; returns its handler."""
    sign = parent.add_parser("sign", help="add your signature to a bundle (checks its files first)")
    sign.add_argument("bundle", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="private key file")
    sign.add_argument(
        "--no-content-check", action="store_true", help="sign without re-hashing the files"
    )
    _passphrase_options(sign)
    return cmd_bundle_sign


def _add_bundle_add_signatures(parent: Any) -> Handler:
    """`appliance bundle add-signatures`: its parser under ``parent``; returns its handler."""
    merge = parent.add_parser(
        "add-signatures", help="merge signatures made on other copies of this bundle"
    )
    merge.add_argument("bundle", type=Path)
    merge.add_argument(
        "manifests", type=Path, nargs="+", help="metadata/targets.json of each other signed copy"
    )
    return cmd_bundle_add_signatures


def _add_bundle_inspect(parent: Any) -> Handler:
    """`appliance bundle inspect`: its parser under ``parent``; returns its handler."""
    inspect = parent.add_parser("inspect", help="show a bundle's manifest (not a verification)")
    inspect.add_argument("bundle", type=Path)
    inspect.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the site's compliance policy the adapters' findings are shown under "
        "(docs/compliance.md); default: intended use commercial",
    )
    inspect.add_argument("--json", action="store_true")
    return cmd_bundle_inspect


def _add_bundle_export_records(parent: Any) -> Handler:
    """`appliance bundle export-records`: its parser under ``parent``; returns its handler."""
    export = parent.add_parser(
        "export-records",
        help="write each adapter's transparency record (JSON and Markdown) and an index of "
        "the findings for the site's compliance file",
    )
    export.add_argument("bundle", type=Path)
    export.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="new (or empty) directory to write into")  # fmt: skip
    export.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the site's compliance policy for the index's findings (docs/compliance.md); "
        "default: intended use commercial",
    )
    export.add_argument("--json", action="store_true", help="print what was written as JSON")
    return cmd_bundle_export_records


def _add_bundle_verify(parent: Any) -> Handler:
    """`appliance bundle verify`: its parser under ``parent``; returns its handler."""
    verify = parent.add_parser("verify", help="verify a bundle against the site's trusted root")
    verify.add_argument("bundle", type=Path)
    _trust_options(verify)
    verify.add_argument("--json", action="store_true")
    return cmd_bundle_verify


def _add_bundle_install(parent: Any) -> Handler:
    """`appliance bundle install`: its parser under ``parent``; returns its handler."""
    install = parent.add_parser(
        "install", help="verify, then copy into a new read-only release directory"
    )
    install.add_argument("bundle", type=Path)
    install.add_argument(
        "--dest", type=Path, required=True, help="release directory to create (must not exist)"
    )
    _trust_options(install)
    install.add_argument("--json", action="store_true")
    return cmd_bundle_install


def _add_bundle_split(parent: Any) -> Handler:
    """`appliance bundle split`: its parser under ``parent``; returns its handler."""
    split = parent.add_parser(
        "split", help="cut a bundle into media parts (the part layout is signed at build)"
    )
    split.add_argument("bundle", type=Path)
    split.add_argument(
        "--out", type=Path, required=True, help="directory for the parts and a copy of metadata/"
    )
    split.add_argument(
        "--part-size", help="must equal the signed part size (default: the signed one)"
    )
    return cmd_bundle_split


def _add_bundle_join(parent: Any) -> Handler:
    """`appliance bundle join`: its parser under ``parent``; returns its handler."""
    join = parent.add_parser(
        "join", help="check every part, name the bad ones, rebuild the bundle (resumable)"
    )
    join.add_argument(
        "parts", type=Path, nargs="+", help="directories holding parts (any order, several media)"
    )
    join.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    join.add_argument(
        "--trust",
        type=Path,
        required=True,
        help="the site's trusted root (checks the manifest first)",
    )
    join.add_argument("--state", type=Path, help="directory remembering accepted versions")
    join.add_argument("--json", action="store_true")
    return cmd_bundle_join


def register(sub: Any) -> dict[str, Handler]:
    """Add keys/trust/bundle parsers; return {dotted command: handler}."""
    handlers: dict[str, Handler] = {}

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    handlers["keys.generate"] = _add_keys_generate(keys)

    trust = sub.add_parser("trust", help="the trusted root: who may sign bundles").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    handlers["trust.init"] = _add_trust_init(trust)
    handlers["trust.rotate"] = _add_trust_rotate(trust)
    handlers["trust.sign"] = _add_trust_sign(trust)
    handlers["trust.show"] = _add_trust_show(trust)
    handlers["trust.reanchor"] = _add_trust_reanchor(trust)

    bundle = sub.add_parser(
        "bundle", help="build, sign, verify, inspect, split and join offline bundles"
    )
    bsub = bundle.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    handlers["bundle.build"] = _add_bundle_build(bsub)
    handlers["bundle.resolve"] = _add_bundle_resolve(bsub)
    handlers["bundle.sign"] = _add_bundle_sign(bsub)
    handlers["bundle.add-signatures"] = _add_bundle_add_signatures(bsub)
    handlers["bundle.inspect"] = _add_bundle_inspect(bsub)
    handlers["bundle.export-records"] = _add_bundle_export_records(bsub)
    handlers["bundle.verify"] = _add_bundle_verify(bsub)
    handlers["bundle.install"] = _add_bundle_install(bsub)
    handlers["bundle.split"] = _add_bundle_split(bsub)
    handlers["bundle.join"] = _add_bundle_join(bsub)
    return handlers
