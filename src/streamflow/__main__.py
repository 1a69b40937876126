"""``python -m streamflow schema``: print the protocol's JSON Schema (for front-end types)."""

from __future__ import annotations

import json
import sys

from streamflow.events import event_json_schema


def main(argv: list[str]) -> int:
    if argv == ["schema"]:
        print(json.dumps(event_json_schema(), indent=2))
        return 0
    print("usage: python -m streamflow schema", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
