"""Benchmarks, one module each (`python -m bench.<name>`); `make bench` runs them all."""


def result(name: str, value: float, unit: str) -> None:
    """One figure, in the form `make bench` output and bench/RESULTS.md quote."""
    print(f"RESULT {name} {value:.3f} {unit}", flush=True)
