"""The shell both engines run to stage a release: checksums, virtualenvs, unpacked archives.

The release is uploaded into ``releases/.staging-<v>`` (``staging_dir``),
checked there with ``sha256sum -c`` (``checklist``), completed on the host
(``staging_command``: the offline virtualenvs from the bundled wheels, the
archives unpacked into the release, then the install record), and only then
renamed into place. A distribution unpacked outside the release
(``dist_command``) is renamed into place with its marker. Both engines run
these very commands, so what they lay down is the same.
"""

from __future__ import annotations

import shlex

from appliance.deploy.host_desired import DistSpec, HostDesired, VenvSpec
from appliance.deploy.host_layout import CURRENT, RELEASES, UNPACKED_MARKER
from appliance.deploy.integrity import check_command, record_command

VENV_MARKER = ".appliance-wheels"  # in each venv: VenvSpec.wheels_digest


def venv_command(spec: VenvSpec, release_dir: str, staging: str) -> str:
    """Shell creating ``spec``'s virtualenv offline, inside the release's staging directory.

    Requirements from the bundled wheels only; then the ``no_deps`` wheels
    without their dependencies (the appliance wheel of the gateway: its own
    dependencies are the CLI's, not the gateway's); then the marker naming what it was
    built from. An adapter-only release (``spec.reusable``) instead copies, as hard links,
    the venv of the release in place when that venv's marker is the same (built from the
    same requirements and wheel digests) and that release passes its integrity check
    (``integrity.check_command``: the venv is as it was installed); otherwise it builds.
    """

    def staged(path: str) -> str:
        return shlex.quote(staging + path.removeprefix(release_dir))

    venv, wheels = staged(spec.path), staged(spec.wheels_dir)
    pip = f"PIP_NO_INDEX=1 {venv}/bin/pip install --quiet --no-index"
    command = f"rm -rf {venv} && python3 -m venv {venv}"
    if spec.requirements:
        reqs = " ".join(shlex.quote(r) for r in spec.requirements)
        command += f" && {pip} --find-links {wheels} {reqs}"
    if spec.no_deps:
        command += f" && {pip} --no-deps {' '.join(staged(w) for w in spec.no_deps)}"
    if not spec.wheels_digest:
        return command
    digest = shlex.quote(spec.wheels_digest)
    command += f" && printf '%s' {digest} > {venv}/{VENV_MARKER}"
    if not spec.reusable:
        return command
    name = shlex.quote(spec.path.removeprefix(release_dir + "/"))
    check = check_command(["@BASE@"])
    check = check[: check.rindex("@BASE@")] + '"$base"'
    return (
        f"base=$(readlink -f {shlex.quote(CURRENT)}) || base=; "
        f'if [ -n "$base" ] && [ "$(cat "$base"/{name}/{VENV_MARKER} 2>/dev/null)" = {digest} ] '
        f'&& [ "$({check} 2>/dev/null)" = "$(printf \'integrity\\t%s\\tok\' "$base")" ]; '
        f'then rm -rf {venv} && cp -a --link "$base"/{name} {venv}; '
        f"else {command}; fi"
    )


def unpack_argv(archive: str, destination: str) -> tuple[str, ...]:
    """GNU tar arguments unpacking a signed distribution archive into ``destination``.

    The archive's bytes are verified (signed SHA-256) before this runs; tar still
    gets no chance to restore owners or modes, and the top directory is stripped.
    """
    return (
        "tar", "--extract", "--gzip", "--file", archive, "--directory", destination,
        "--strip-components=1", "--no-same-owner", "--no-same-permissions",
        "--no-overwrite-dir", "--delay-directory-restore",
    )  # fmt: skip


def staging_commands(desired: HostDesired, staging: str) -> list[str]:
    """Shell run in the release's staging directory after its files are checked: the
    virtualenvs, then the archives unpacked into the release. Both engines run these very
    commands (one each; each starts with ``rm -rf <what it makes>``, so a rerun starts clean)."""
    commands = [venv_command(spec, desired.release_dir, staging) for spec in desired.venvs]
    for spec in desired.unpacks:
        archive = staging + spec.archive.removeprefix(desired.release_dir)
        path = staging + spec.path.removeprefix(desired.release_dir)
        commands.append(
            f"rm -rf {shlex.quote(path)} && mkdir -p {shlex.quote(path)} && "
            + shlex.join(unpack_argv(archive, path))
        )
    return commands


def staging_command(desired: HostDesired, staging: str) -> str:
    """``staging_commands`` as one shell command running them side by side (the two venvs
    take about as long together as the larger alone); it fails, with the tail of each failed
    step's output, if any of them fails. Then, whatever the release holds, the install record
    of the whole staging directory (``integrity.record_command``): the last write before the
    release is made read-only, so what was built on the host is checked like the rest."""
    record = record_command(staging)
    commands = staging_commands(desired, staging)
    if not commands:
        return record
    lines = ["logs=$(mktemp -d)"]
    for i, command in enumerate(commands):
        lines.append(f'( {command} ) >"$logs/{i}" 2>&1 & pid{i}=$!')
    lines.append("failed=0")
    for i in range(len(commands)):
        lines.append(
            f'wait $pid{i} || {{ failed=1; echo "staging step {i + 1} of {len(commands)} failed:" >&2; '
            f'tail -n 20 "$logs/{i}" >&2; }}'
        )
    lines.append('rm -rf "$logs"')
    lines.append(f'[ "$failed" = 0 ] && {record}')
    return "\n".join(lines)


def dist_command(spec: DistSpec) -> str:
    """Shell unpacking ``spec`` beside its place and renaming it there; nothing if done."""
    q = shlex.quote
    partial = f"{spec.path}.partial"
    writable = " ".join(q(f"{partial}/{w}") for w in spec.writable)
    private = "".join(f"chmod 0700 {q(f'{partial}/{p}')} && " for p in spec.private)
    return (
        f"[ -e {q(spec.marker)} ] && exit 0; "
        f"rm -rf {q(partial)} && mkdir -p {q(partial)} && "
        f"{shlex.join(unpack_argv(spec.archive, partial))} && "
        f"mkdir -p {writable} && chown -R {q(spec.owner)}:{q(spec.owner)} {writable} && "
        f"{private}touch {q(partial + '/' + UNPACKED_MARKER)} && rm -rf {q(spec.path)} && "
        f"mv -T {q(partial)} {q(spec.path)}"
    )


def reuse_command(desired: HostDesired, staging: str) -> str:
    """Shell linking an adapter-only release's reused files from the release in place into
    ``staging`` (empty when it reuses nothing).

    Hard links: the release in place is read-only and never rewritten, so the new release
    shares its bytes without copying them. Nothing is trusted by name: the signed digests of
    every staged file, reused ones included, are checked next (``sha256sum -c``). A file the
    release in place lacks stops the deploy with a message naming it.
    """
    if not desired.reused:
        return ""
    q = shlex.quote
    prefix = desired.release_dir + "/"
    lines = [
        f"base=$(readlink -f {q(CURRENT)}) || base=",
        '[ -n "$base" ] && [ -d "$base" ] || { echo "no release is in place on this host to '
        'take the base files from: deploy the full bundle first" >&2; exit 1; }',
        "missing=0",
    ]
    for f in desired.reused:
        rel = q(f.path.removeprefix(prefix))
        lines.append(
            f'if [ -f "$base"/{rel} ]; then mkdir -p "$(dirname {q(staging)}/{rel})" && '
            f'ln -f "$base"/{rel} {q(staging)}/{rel}; else echo "the release in place '
            f'($base) has no {rel}" >&2; missing=1; fi'
        )
    lines.append(
        '[ "$missing" = 0 ] || { echo "this adapter-only bundle builds on files the release '
        'in place lacks: deploy its base bundle first" >&2; exit 1; }'
    )
    return "\n".join(lines)


def checklist(desired: HostDesired) -> str:
    """``sha256sum -c`` input for the release files, relative to the release directory."""
    prefix = desired.release_dir + "/"
    return (
        "\n".join(f"{f.sha256}  {f.path.removeprefix(prefix)}" for f in desired.release_files)
        + "\n"
    )


def staging_dir(desired: HostDesired) -> str:
    """Where both engines stage release ``desired.version`` before it is moved into place."""
    return f"{RELEASES}/.staging-{desired.version}"
