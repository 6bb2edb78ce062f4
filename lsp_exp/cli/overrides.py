"""The command line's overrides, checked before Hydra starts: one line naming the first that does not parse."""
from __future__ import annotations

import sys

from hydra._internal.utils import get_args_parser  # what hydra.main parses argv with
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException


def check_overrides(argv: list[str]) -> None:
    """Exit 2 with one line naming the first command-line override Hydra's grammar rejects (Hydra's
    own message does not always name it). Anything else is left to Hydra."""
    try:
        overrides = get_args_parser().parse_known_args(argv)[0].overrides
    except (SystemExit, ValueError):
        return
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as err:
            reason = next((line for line in str(err).splitlines()
                           if line.strip() and not line.startswith(("See https", "Error parsing override"))),
                          "syntax error")
            print(f"error: cannot parse the override {override!r}: {reason} "
                  "(grammar: https://hydra.cc/docs/1.3/advanced/override_grammar/basic/)", file=sys.stderr)
            raise SystemExit(2) from None
