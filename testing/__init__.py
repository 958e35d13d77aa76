"""What the tests and the benchmarks share: test data, WER, loopback servers and peers, in-memory fakes.

Tests (`tests/`) and benchmark programs (`benchmarks/`) both import this package; it imports neither, so
neither depends on the other. Nothing here is imported by the service itself.
"""
