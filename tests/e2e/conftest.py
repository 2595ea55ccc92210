"""``make`` (a client factory parametrized sync/async) and its event-loop thread, for the SDK suites here."""

from tests.e2e.sdk_fixtures import loop, make  # noqa: F401 - fixtures
