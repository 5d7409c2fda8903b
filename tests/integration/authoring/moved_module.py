"""`shout` of functions_module.py, moved here: the same code, other comments and layout."""

from __future__ import annotations

import weft


# Moved from functions_module.py without changing what it does.
@weft.function(outputs="text")
def shout(word: str) -> str:
    """Upper-cases a word."""
    return (word.upper()) + "!"  # same expression, other parentheses
