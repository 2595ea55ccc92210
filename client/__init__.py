"""The Tessera SDK and the ``tessera`` command line."""
