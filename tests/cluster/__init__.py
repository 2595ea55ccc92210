"""Several Tessera nodes on one store: the emulator (moto, patched to hold load), the cluster harness, and the
linearizability checker. Usable by hand: ``python -m tests.cluster emulator --port 5000``, ``python -m tests.cluster up``."""
