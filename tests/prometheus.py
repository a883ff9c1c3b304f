"""Reading Prometheus' text exposition format in tests."""

import re


def sample(text: str, name: str, **labels) -> float:
    """The value of the sample `name` with exactly these labels (in any order); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if got == {k: str(v) for k, v in labels.items()}:
                return float(line.rsplit(" ", 1)[1])
    return 0
