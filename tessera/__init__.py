"""Tessera: versioned, encrypted configuration and secrets with access control and live reload.

Installed, the repository's top-level folders live under this one package: ``tessera.core`` (the domain),
``tessera.handlers`` (HTTP and Lambda), ``tessera.local`` (``tessera serve``) and ``tessera.client`` (the SDK
and the CLI). The folders stay at the top of the repository; ``pyproject.toml`` maps them here.
"""

__version__ = "0.2.0"
