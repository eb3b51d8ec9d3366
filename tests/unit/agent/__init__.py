"""Unit tests of the agent: runtimes, datasets, collectors, the link, the supervisor."""
