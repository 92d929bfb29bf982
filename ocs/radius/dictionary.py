"""The RADIUS dictionary ocs ships (RFC 2865/2866/2869/5176 and Cisco vendor 9), loaded once."""

from functools import cache
from importlib import resources

from pyrad.dictionary import Dictionary


@cache
def radius_dictionary() -> Dictionary:
    """The RADIUS attribute dictionary shipped with ocs."""
    root = resources.files("ocs.radius").joinpath("dictionaries")
    with resources.as_file(root) as path:
        return Dictionary(str(path / "dictionary"))
