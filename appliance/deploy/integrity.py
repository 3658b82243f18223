"""What was installed in a release, recorded on the host, and the check that finds any change.

A release directory holds the bundle's files (``files/``), its signed manifest
(``metadata/targets.json``), the ``.sha256sums`` checked when it was staged,
and what was *built on the host* from the bundle: the virtualenvs and the
unpacked runtimes. The bundle's own digests cover only the first; the
second is recorded at install time in ``RECORD_FILE`` (one JSON object a line:
path, type, size, mtime, SHA-256 or link target for every file and symlink of
the release but the record itself), written by ``record_command`` in the
staging directory *before* it is made read-only and moved into place, so the
record is part of what is checked.

``check_script`` (run on the host with ``python3``; read-only) compares a
release with its record and with its ``targets.json``:

- always: the set of paths (a file added, e.g. a ``.pth`` dropped into a
  venv, or removed is found), each one's type, size and mtime, link targets,
  and the SHA-256 of every file up to ``SMALL_FILE`` bytes (code and
  configuration: where an edit matters and hashing is cheap);
- with ``full`` (``appliance status --verify``; the deploy probe hashes the
  bundle's files itself): the SHA-256 of every file, the model included.

Why this split: hashing a 100 GB model on every ``status`` takes minutes; a
size and mtime check of it takes microseconds and finds any ordinary edit
(``touch -r`` can put an mtime back: only the full check finds that). What
this cannot prove: someone who is root on the host can rewrite a file of
the venvs *and* the record together. The bundle's own files are also
compared with the release's signed ``targets.json`` (sizes here; digests by
the deploy's probe and ``--verify``), which narrows, not closes, that gap;
the record's own digest is not kept off the host.

Output lines: ``integrity<TAB>RELEASE<TAB>ok`` or one
``integrity<TAB>RELEASE<TAB>PROBLEM`` per problem (at most ``MAX_PROBLEMS``
named, then a count). ``parse_integrity`` reads them.
"""

from __future__ import annotations

import shlex

RECORD_FILE = ".installed.jsonl"
SMALL_FILE = 1024 * 1024
MAX_PROBLEMS = 20

# Run as `python3 -c RECORD STAGING`: every file and symlink under STAGING but the record.
_RECORD = r"""
import hashlib, json, os, stat, sys
root = sys.argv[1]
name = %(record)r
out = []
for top, dirs, files in os.walk(root):
    dirs.sort()
    for entry in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
        full = os.path.join(top, entry)
        rel = os.path.relpath(full, root)
        if rel == name or rel == name + ".tmp":
            continue
        st = os.lstat(full)
        item = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if stat.S_ISLNK(st.st_mode):
            item.update(type="link", target=os.readlink(full))
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            item.update(type="file", sha256=h.hexdigest())
        else:
            item.update(type="other")
        out.append(json.dumps(item, sort_keys=True))
with open(os.path.join(root, name + ".tmp"), "w") as f:
    f.write("\n".join(out) + "\n")
os.replace(os.path.join(root, name + ".tmp"), os.path.join(root, name))
"""

# Run as `python3 -c CHECK MODE RELEASE...`; read-only.
_CHECK = r"""
import hashlib, json, os, stat, sys
mode, releases = sys.argv[1], sys.argv[2:]
name, small, cap = %(record)r, %(small)d, %(cap)d
def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
for release in releases:
    problems = []
    try:
        with open(os.path.join(release, name)) as f:
            record = {r["path"]: r for r in map(json.loads, filter(None, f.read().splitlines()))}
    except FileNotFoundError:
        print("integrity\t%%s\tno install record (%%s): installed by an older appliance, or removed" %% (release, name))
        continue
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print("integrity\t%%s\tinstall record %%s unreadable: %%s" %% (release, name, exc))
        continue
    signed = {}
    try:
        with open(os.path.join(release, "metadata", "targets.json")) as f:
            targets = json.load(f)["signed"]["targets"]
        signed = {"files/" + p: (t["length"], t["hashes"]["sha256"]) for p, t in targets.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        problems.append("metadata/targets.json unreadable: %%s" %% exc)
    seen = set()
    for top, dirs, files in os.walk(release):
        dirs.sort()
        for entry in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            full = os.path.join(top, entry)
            rel = os.path.relpath(full, release)
            if rel == name:
                continue
            seen.add(rel)
            want = record.get(rel)
            if want is None:
                problems.append("%%s: added (not in the install record)" %% rel)
                continue
            st = os.lstat(full)
            kind = "link" if stat.S_ISLNK(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
            if kind != want.get("type"):
                problems.append("%%s: is a %%s, was a %%s" %% (rel, kind, want.get("type")))
            elif kind == "link":
                if os.readlink(full) != want.get("target"):
                    problems.append("%%s: link target changed" %% rel)
            elif st.st_size != want.get("size"):
                problems.append("%%s: size %%d, was %%s" %% (rel, st.st_size, want.get("size")))
            elif rel in signed and st.st_size != signed[rel][0]:
                problems.append("%%s: size %%d, signed %%d" %% (rel, st.st_size, signed[rel][0]))
            elif st.st_mtime_ns != want.get("mtime_ns"):
                problems.append("%%s: modified (mtime changed)" %% rel)
            elif kind == "file" and (mode == "full" or st.st_size <= small):
                found = digest(full)
                if found != want.get("sha256") or (rel in signed and found != signed[rel][1]):
                    problems.append("%%s: content changed (sha256 %%s...)" %% (rel, found[:12]))
    for rel in sorted(set(record) - seen):
        problems.append("%%s: missing" %% rel)
    for rel in sorted(set(signed) - seen):
        if rel not in record:
            problems.append("%%s: missing (signed in targets.json)" %% rel)
    for problem in problems[:cap]:
        print("integrity\t%%s\t%%s" %% (release, problem.replace("\t", " ").replace("\n", " ")))
    if len(problems) > cap:
        print("integrity\t%%s\t... and %%d more" %% (release, len(problems) - cap))
    if not problems:
        print("integrity\t%%s\tok" %% release)
"""


def record_command(staging: str) -> str:
    """Shell writing the install record of the staging directory ``staging`` (last step before
    it is made read-only)."""
    script = _RECORD % {"record": RECORD_FILE}
    return f"python3 -c {shlex.quote(script)} {shlex.quote(staging)}"


def check_command(releases: list[str], *, full: bool = False) -> str:
    """Shell checking each release directory against its record (read-only); nothing if none."""
    if not releases:
        return ""
    script = _CHECK % {"record": RECORD_FILE, "small": SMALL_FILE, "cap": MAX_PROBLEMS}
    args = " ".join(shlex.quote(r) for r in releases)
    return f"python3 -c {shlex.quote(script)} {'full' if full else 'quick'} {args}"


def parse_integrity(output: str) -> dict[str, tuple[str, ...]]:
    """Per release directory, its problems (empty: intact) from ``check_command``'s output.

    A release the output does not mention at all is absent from the result: the
    check did not run on it (e.g. ``python3`` failed), which is not "intact".
    """
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        release, _, problem = rest.partition("\t")
        if kind != "integrity" or not release or not problem:
            continue
        problems = found.setdefault(release, [])
        if problem != "ok":
            problems.append(problem)
    return {release: tuple(problems) for release, problems in found.items()}
