"""The one error tree. Every error a user can cause is an ``ApplianceError``.

Messages say what was expected, what was found and what to do. Each class
carries the exit code the CLI uses, so front ends never map errors by hand.
Library errors are wrapped with ``raise ... from`` to keep the cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.exitcodes import ExitCode


class ApplianceError(Exception):
    """Base of every error appliance raises on purpose."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n{self.hint}"


class InputError(ApplianceError):
    """A file or argument the user gave is malformed or unusable."""

    exit_code = ExitCode.USAGE


class OutputPathError(InputError):
    """A place the command would write to is unusable (missing, read-only, not a directory, taken)."""


class StateWriteError(OutputPathError):
    """The trust state could not be written; what was being installed was taken back."""


class FactsFileError(InputError):
    """A saved facts file (from ``appliance detect --json``) is unreadable or invalid."""


class ProfileError(InputError):
    """A hardware profile file is invalid, or a profile name is unknown."""


class ModelFileError(InputError):
    """A model directory or GGUF file cannot be read or is corrupt."""


class DoesNotFitError(ApplianceError):
    """The hardware or the chosen profile cannot run the requested model."""

    exit_code = ExitCode.DOES_NOT_FIT


class PreflightError(DoesNotFitError):
    """A host fails a preflight (driver vs the wheels' CUDA, compute capability, MIG, GPU
    memory in use, /dev/shm, disk, fit): refused before any host changes, every failed check of
    every host listed (``appliance.plan.preflight``)."""


class GroupRefusedError(DoesNotFitError):
    """A multi-node serving group cannot serve as the inventory names it (a member without
    facts, members that disagree on GPUs, driver, CUDA, interface, MTU, clock, RDMA or
    compilers): refused before any host changes, every problem listed
    (``appliance.plan.group_preflight``)."""


@dataclass(frozen=True, slots=True)
class AdapterRefusal:
    """One reason one LoRA adapter cannot be served: which adapter, why, what to do."""

    adapter: str
    reason: str
    hint: str


class AdapterRefusedError(DoesNotFitError):
    """One or more LoRA adapters cannot be served on the model and profile: refused at plan time,
    every refusal of every adapter listed (``refusals``; ``appliance.plan.adapters``)."""

    def __init__(self, refusals: Sequence[AdapterRefusal]) -> None:
        self.refusals = tuple(refusals)
        names = sorted({r.adapter for r in self.refusals})
        lines = "\n".join(f"  - adapter {r.adapter!r}: {r.reason}; {r.hint}" for r in self.refusals)
        super().__init__(
            f"{len(self.refusals)} adapter check(s) failed for {len(names)} adapter(s) "
            f"({', '.join(names)}), refused before anything was deployed:\n{lines}",
            hint="Fix or remove each adapter named above, then plan again.",
        )


class VerificationError(ApplianceError):
    """A bundle failed verification; nothing from it may be used."""

    exit_code = ExitCode.VERIFICATION_FAILED


class Cancelled(ApplianceError):
    """The operator cancelled a long operation; it stopped at a safe point."""

    exit_code = ExitCode.INTERRUPTED


class DeploymentError(ApplianceError):
    """A deployment step failed on a host."""

    exit_code = ExitCode.DEPLOYMENT_FAILED


class HostStateError(DeploymentError):
    """A file on a host that an operation depends on (the audit log's tail, the journal, the
    ``current`` link, a pending switch record, the target release) is damaged: refused before
    anything was changed, with how to repair it."""


class DiskSpaceError(DeploymentError):
    """A host's filesystem has less free space than the release needs; refused before upload."""


class RemoteFactsError(DeploymentError):
    """What a host's facts script printed cannot be read (cut off, a section missing, a number
    that is not one, a GPU report that does not validate)."""


# --- bundle verification: one class per kind of failure (all exit 4) -------------


class MetadataError(VerificationError):
    """Bundle or trust metadata is malformed, oversized, or of the wrong type."""


class UnsignedError(VerificationError):
    """The metadata carries no signature at all."""


class UnknownKeyError(VerificationError):
    """Signatures exist, but none from a key the trusted root lists for the role."""


class BadSignatureError(VerificationError):
    """A signature from a trusted key does not match the signed bytes."""


class ThresholdError(VerificationError):
    """Fewer valid signatures from distinct trusted keys than the threshold."""


class ExpiredError(VerificationError):
    """The metadata's expiry date has passed by the local clock."""


class RollbackError(VerificationError):
    """The bundle is older than the last one this site accepted."""


class SameVersionConflictError(VerificationError):
    """Same version as the last accepted bundle, different content."""


class VersionJumpError(VerificationError):
    """The version leaps implausibly far ahead (would lock out later updates)."""


class RootRotationError(VerificationError):
    """A new trusted root in the bundle is not signed by the old and new thresholds."""


class TrustAnchorError(VerificationError):
    """A root kept in the state directory does not descend from the operator's anchor (``--trust``)."""


class UnsafePathError(VerificationError):
    """A path escapes the bundle, collides with another, or is not a plain file."""


class AuditAnchorError(VerificationError):
    """This machine's audit anchors (appliance/deploy/audit_anchor.py) cannot be read or written."""


class FileSetError(VerificationError):
    """Files missing from, or extra to, the signed manifest."""


class SizeMismatchError(VerificationError):
    """A file's size differs from the signed length."""


class DigestMismatchError(VerificationError):
    """A file's (or shard's, or media part's) SHA-256 differs from the signed digest."""


class MediaPartError(VerificationError):
    """A media part of a split bundle is missing, damaged, or not of this bundle."""


class KeyFileError(InputError):
    """A key file cannot be read, decrypted, or is not an Ed25519 key."""


class InstallationError(ApplianceError):
    """appliance's own files (templates, playbooks, profiles) are missing: a broken install."""


class BundleBuildError(ApplianceError):
    """Building a bundle failed (a source, a download, a pinned digest)."""

    exit_code = ExitCode.USAGE
