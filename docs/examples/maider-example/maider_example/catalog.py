"""Embedded catalog: plain data, imported only when maider needs catalog data."""

import datetime

from maider.provider import GPUModel, Price, Region, VMType

PROVIDER_ID = "example"
CATALOG_DATE = datetime.date(2026, 11, 1)
CATALOG_SOURCE = "made up for the documentation"

L4 = GPUModel("L4", 24, "Ada Lovelace", compute_capability=(8, 9))

REGION_METADATA = {
    "ex-west-1": Region("ex-west-1", "Lisbon", "PT", PROVIDER_ID),
    "ex-east-1": Region("ex-east-1", "Vienna", "AT", PROVIDER_ID),
}

GPU_TYPES = {
    "ex-l4-1": VMType(
        "ex-l4-1", "L4 x1", PROVIDER_ID, L4, 1, 8, 32, Price(0.61, "USD"), ("ex-west-1", "ex-east-1")
    ),
    "ex-l4-2": VMType("ex-l4-2", "L4 x2", PROVIDER_ID, L4, 2, 16, 64, Price(1.22, "USD"), ("ex-west-1",)),
}

GPU_REGIONS = tuple(sorted({r for t in GPU_TYPES.values() for r in t.regions}))
