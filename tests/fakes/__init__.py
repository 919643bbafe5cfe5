"""Test doubles that other tests, benchmarks and users' own tests can reuse.

``FakeOpenAI`` and ``FakeAnthropic`` are real local HTTP servers speaking those
APIs' wire protocols; see :mod:`tests.fakes.upstreams` for how to script them.
"""

from tests.fakes.upstreams import FakeAnthropic, FakeOpenAI, FakeUpstream, Fault, RecordedRequest

__all__ = ["FakeAnthropic", "FakeOpenAI", "FakeUpstream", "Fault", "RecordedRequest"]
