"""Kubernetes resource quantities ("16Mi", "1Gi", "500M", "1e9") as a whole number of bytes."""

import re
from decimal import Decimal, InvalidOperation, ROUND_CEILING

_QUANTITY = re.compile(r"(?P<number>[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                       r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)|[eE](?P<exp>[+-]?[0-9]{1,3}))?\Z")
_FACTORS = {None: 1, "m": Decimal("0.001"), "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9,
            "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18, "Ki": 1 << 10, "Mi": 1 << 20,
            "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
MAX_BYTES = (1 << 63) - 1


class BadQuantity(ValueError):
    pass


def parse_bytes(text):
    """Bytes in a quantity, rounded up (as Kubernetes does for byte values)."""
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) and len(text) <= 64 else None
    if not match:
        raise BadQuantity(f"not a quantity: {text!r} (examples: 16Mi, 1Gi, 500M)")
    try:
        value = Decimal(match["number"])
        if match["exp"] is not None:
            value = value.scaleb(int(match["exp"]))
        else:
            value *= _FACTORS[match["suffix"]]
    except InvalidOperation:
        raise BadQuantity(f"not a quantity: {text!r}") from None
    value = int(value.to_integral_value(rounding=ROUND_CEILING))
    if value > MAX_BYTES:
        raise BadQuantity(f"quantity {text!r} is too large")
    return value
