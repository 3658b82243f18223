"""The one error tree. Every error a user can cause is an ``ApplianceError``.

Messages say what was expected, what was found and what to do. Each class
carries the exit code the CLI uses, so front ends never map errors by hand.
Library errors are wrapped with ``raise ... from`` to keep the cause.
"""

from __future__ import annotations

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


class FactsFileError(InputError):
    """A saved facts file (from ``appliance detect --json``) is unreadable or invalid."""


class ProfileError(InputError):
    """A hardware profile file is invalid, or a profile name is unknown."""


class ModelFileError(InputError):
    """A model directory or GGUF file cannot be read or is corrupt."""


class DoesNotFitError(ApplianceError):
    """The hardware or the chosen profile cannot run the requested model."""

    exit_code = ExitCode.DOES_NOT_FIT


class VerificationError(ApplianceError):
    """A bundle failed verification; nothing from it may be used."""

    exit_code = ExitCode.VERIFICATION_FAILED


class DeploymentError(ApplianceError):
    """A deployment step failed on a host."""

    exit_code = ExitCode.DEPLOYMENT_FAILED
