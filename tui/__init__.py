"""The Textual front end of ``appliance``: a guided install from detection to a working endpoint.

The TUI has no logic of its own beyond presentation: every decision (profile
choice, fit, verification, diff, deploy) is a core call made through
``tui.backend.Backend``; long operations are the core's event generators,
consumed in worker threads whose results come back as typed messages, one
per call (``tui.messages``). The app owns the step table (``tui.app.STEPS``)
and decides the next screen; screens never import each other or the app
(they see it through ``tui.installer.Installer``). The core never imports this package
(the import contracts in ``pyproject.toml``, ``tests/unit/test_core_imports.py``);
``appliance tui`` imports it lazily.

Entry points: ``tui.app.build_app`` (the one factory the CLI and the tests
use) and ``tui.app.run``.
"""
