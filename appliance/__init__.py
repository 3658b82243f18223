"""appliance: install a sovereign, on-premise LLM service onto disconnected hosts.

The package root holds the core library (plain functions over plain data).
Front ends live in ``appliance.cli`` (headless) and the top-level ``tui``
package; nothing else in ``appliance`` may import them, Rich, Textual or the
CLI framework (enforced by the import contracts in ``pyproject.toml``, ``make imports``,
and by ``tests/unit/test_core_imports.py``).
"""

__version__ = "0.1.0"
