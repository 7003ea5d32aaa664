"""The operator tests' fixtures (the chart, its ServiceAccount, the operator process) live in
tests/conftest.py, shared with the SDK tests that submit FineTuneJobs."""
