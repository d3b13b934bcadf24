"""The fault suite of issue #10: bounded loadtests against a real `jsorc serve` on loopback,
each injecting one fault and counting what the clients saw (harness.py, scenarios.py).
`python -m tests.reliability --long` is `make chaos`; test_faults.py runs the short rows."""
