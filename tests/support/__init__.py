"""What the test modules share: builders, polling, the cluster tests' kubectl and kwok helpers,
TLS material. Plain functions and classes only: fixtures live in the conftest.py files, and no
test module imports another."""
