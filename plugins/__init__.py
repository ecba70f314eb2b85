"""genbench's built-in plugins.

Imported as ``genbench_plugins`` and registered through the ``genbench`` entry-point
group exactly like a third-party plugin (see ``pyproject.toml``); the core never
imports them by name.
"""
