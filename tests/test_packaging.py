"""The promises of the package metadata: every dependency's lower bound is the release series CI tests (the pin in
constraints.txt), so a user never gets an older library that no test has run against."""
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parents[1]


def pins() -> dict[str, Version]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {m[1].lower(): Version(m[2]) for l in lines if (m := re.fullmatch(r"([\w.-]+)==([\w.]+)(\+\w+)?", l.strip()))}


def test_lower_bounds_are_the_tested_series():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["quant"] + meta["optional-dependencies"]["gguf"]]
    tested, checked = pins(), 0
    for r in reqs:
        lows = [Version(s.version) for s in r.specifier if s.operator == ">="]
        assert lows, f"{r.name} has no lower bound"
        pin = tested.get(r.name.lower())
        assert pin is not None, f"{r.name} is a dependency but constraints.txt does not pin the version CI tests"
        series = Version(f"{pin.major}.{pin.minor}")
        assert lows[0] >= series, f"{r.name}>={lows[0]} admits versions older than the tested {pin} (raise it to {series})"
        assert lows[0] <= pin and r.specifier.contains(pin), f"{r.name}: the tested {pin} is outside {r.specifier}"
        checked += 1
    assert checked >= 15
