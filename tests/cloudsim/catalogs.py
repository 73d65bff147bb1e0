"""Seed catalogs: GPU types, prices and regions from shared/notes/vendor-apis.md §4.

GPU ids, GPU counts, vCPU, RAM, prices and regions are copied from the notes' tables. Fields the
notes do not give (disk sizes, transfer, labels of RTX 4000 Ada plans, DO regions for some
slugs, GPU model strings) are marked ``# guess`` and only need to be plausible: maider reads
them from the API at run time. A couple of non-GPU entries exist per vendor so that the GPU
filters (Linode X-Filter class, DO type=gpus, Scaleway gpu > 0) have something to filter out.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
GB = 1000**3

# ------------------------------------------------------------------------------------------
# Linode (§4.1)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinodeRegion:
    id: str
    label: str
    country: str
    gpu: bool = True


RTX6000_REGIONS = ("us-east", "us-southeast", "eu-central", "ap-west", "ap-south")
RTX4000_REGIONS = ("us-ord", "us-sea", "de-fra-2", "fr-par", "jp-osa", "sg-sin-2", "in-bom-2")

LINODE_REGIONS: tuple[LinodeRegion, ...] = (
    LinodeRegion("us-east", "Newark, NJ", "us"),
    LinodeRegion("us-southeast", "Atlanta, GA", "us"),
    LinodeRegion("eu-central", "Frankfurt, DE", "de"),
    LinodeRegion("ap-west", "Mumbai, IN", "in"),
    LinodeRegion("ap-south", "Singapore, SG", "sg"),
    LinodeRegion("us-ord", "Chicago, IL", "us"),
    LinodeRegion("us-sea", "Seattle, WA", "us"),
    LinodeRegion("de-fra-2", "Frankfurt 2, DE", "de"),
    LinodeRegion("fr-par", "Paris, FR", "fr"),
    LinodeRegion("jp-osa", "Osaka, JP", "jp"),
    LinodeRegion("sg-sin-2", "Singapore 2, SG", "sg"),
    LinodeRegion("in-bom-2", "Mumbai 2, IN", "in"),
    LinodeRegion("us-west", "Fremont, CA", "us", gpu=False),  # a region without GPUs
)


@dataclass(frozen=True)
class LinodeType:
    id: str
    label: str
    cls: str
    gpus: int
    vcpus: int
    memory_mb: int
    disk_mb: int
    transfer_gb: int
    hourly: float
    monthly: float
    regions: tuple[str, ...]
    network_out: int = 10000


def _rtx6000(n: int, vcpus: int, ram_gb: int, hourly: float, monthly: float) -> LinodeType:
    return LinodeType(
        id=f"g1-gpu-rtx6000-{n}",
        label=f"Dedicated {ram_gb}GB + RTX6000 GPU x{n}",
        cls="gpu",
        gpus=n,
        vcpus=vcpus,
        memory_mb=ram_gb * 1024,
        disk_mb=655360 * n,  # 640 GB per card: the -1 value is from a real capture, the rest a guess
        transfer_gb=16000 if n == 1 else 20000,  # guess beyond -1
        hourly=hourly,
        monthly=monthly,
        regions=RTX6000_REGIONS,
    )


def _rtx4000(suffix: str, n: int, vcpus: int, ram_gb: int, hourly: float, monthly: float) -> LinodeType:
    return LinodeType(
        id=f"g2-gpu-rtx4000a{n}-{suffix}",
        label=f"RTX4000 Ada x{n} {suffix.upper()}",  # guess: the notes have no official label
        cls="gpu",
        gpus=n,
        vcpus=vcpus,
        memory_mb=ram_gb * 1024,
        disk_mb=(1000 if suffix == "hs" else 500) * 1024 * max(1, n // 2),  # guess
        transfer_gb=1000 * vcpus // 4,  # guess
        hourly=hourly,
        monthly=monthly,
        regions=RTX4000_REGIONS,
    )


LINODE_TYPES: tuple[LinodeType, ...] = (
    _rtx6000(1, 8, 32, 1.50, 1000),
    _rtx6000(2, 16, 64, 3.00, 2000),
    _rtx6000(3, 20, 96, 4.50, 3000),
    _rtx6000(4, 24, 128, 6.00, 4000),
    _rtx4000("s", 1, 4, 16, 0.52, 350),
    _rtx4000("m", 1, 8, 32, 0.67, 446),
    _rtx4000("l", 1, 16, 64, 0.96, 638),
    _rtx4000("xl", 1, 32, 128, 1.53, 1022),
    _rtx4000("s", 2, 8, 32, 1.05, 700),
    _rtx4000("m", 2, 16, 64, 1.34, 892),
    _rtx4000("hs", 2, 16, 64, 1.49, 992),
    _rtx4000("s", 4, 32, 128, 2.96, 1976),
    _rtx4000("m", 4, 48, 196, 3.57, 2384),
    # Non-GPU filler, public list prices.
    LinodeType("g6-nanode-1", "Nanode 1GB", "nanode", 0, 1, 1024, 25600, 1000, 0.0075, 5.0, ()),
    LinodeType("g6-standard-2", "Linode 4GB", "standard", 0, 2, 4096, 81920, 4000, 0.036, 24.0, ()),
)

# ------------------------------------------------------------------------------------------
# DigitalOcean (§4.2)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DORegion:
    slug: str
    name: str
    features: tuple[str, ...] = ("backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer")


DO_REGIONS: tuple[DORegion, ...] = (
    DORegion("tor1", "Toronto 1"),
    DORegion("nyc2", "New York 2"),
    DORegion("atl1", "Atlanta 1"),
    DORegion("ams3", "Amsterdam 3"),
    DORegion("nyc3", "New York 3"),  # no GPUs
    DORegion("sfo3", "San Francisco 3"),  # no GPUs
)


@dataclass(frozen=True)
class DOSize:
    slug: str
    description: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    transfer_tb: float
    hourly: float
    regions: tuple[str, ...]
    gpu_count: int = 0
    gpu_model: str | None = None
    vram_gib: int = 0
    scratch_gib: int = 0
    available: bool = True

    @property
    def monthly(self) -> float:
        return round(self.hourly * 672, 2)  # DO caps a month at 672 hours

    @property
    def is_gpu(self) -> bool:
        return self.gpu_count > 0


# Prices are the notes' list prices and regions the notes' 2026-09 captures, except where a row says
# "guess"; gpu_info.model strings other than nvidia_h100 (the spec's example) are guesses too.
# Columns: slug, vCPU, RAM GiB, boot disk GB, $/h, GPUs, gpu_info.model, VRAM/GPU GiB, scratch GiB, regions.
_DO_GPU_TABLE = """
gpu-4000adax1-20gb    8    32   500   0.76  1  nvidia_rtx_4000_ada   20      0  -               # sold nowhere now
gpu-6000adax1-48gb    8    64   500   1.57  1  nvidia_rtx_6000_ada   48      0  tor1
gpu-l40sx1-48gb       8    64   500   1.57  1  nvidia_l40s           48      0  tor1            # regions: guess
gpu-h100x1-80gb      20   240   720   3.39  1  nvidia_h100           80   5120  ams3,nyc2,tor1
gpu-h100x8-640gb    160  1920  2046  23.92  8  nvidia_h100           80  40960  ams3
gpu-h200x1-141gb     24   240   720   3.44  1  nvidia_h200          141   5120  atl1,nyc2       # regions: guess
gpu-h200x8-1128gb   192  1920  2046  27.52  8  nvidia_h200          141  40960  atl1            # regions: guess
gpu-mi300x1-192gb    20   240   720   1.99  1  amd_mi300x           192   5120  atl1,nyc2
gpu-mi300x8-1536gb  160  1920  2046  15.92  8  amd_mi300x           192  40960  ams3            # regions: guess
"""


def _do_gpu_sizes() -> list[DOSize]:
    out = []
    for line in _DO_GPU_TABLE.strip().splitlines():
        slug, vcpus, ram, disk, hourly, count, model, vram, scratch, regions = line.split("#")[0].split()
        out.append(
            DOSize(
                slug=slug,
                description=f"GPU {model.split('_', 1)[1].replace('_', ' ').upper()} x{count}",
                vcpus=int(vcpus),
                memory_mb=int(ram) * 1024,
                disk_gb=int(disk),
                transfer_tb=10 if int(count) == 1 else 60,  # guess
                hourly=float(hourly),
                regions=() if regions == "-" else tuple(regions.split(",")),
                gpu_count=int(count),
                gpu_model=model,
                vram_gib=int(vram),
                scratch_gib=int(scratch),
                available=regions != "-",
            )
        )
    return out


DO_SIZES: tuple[DOSize, ...] = (
    *_do_gpu_sizes(),
    # Non-GPU filler, public list prices.
    DOSize("s-1vcpu-1gb", "Basic", 1, 1024, 25, 1, 0.00893, ("nyc3", "sfo3", "tor1", "ams3")),
    DOSize("s-2vcpu-4gb", "Basic", 2, 4096, 80, 4, 0.03571, ("nyc3", "sfo3", "tor1", "ams3")),
)

DO_IMAGES: dict[str, dict[str, object]] = {
    "gpu-h100x1-base": {"id": 160000001, "name": "AI/ML Ready H100x1", "distribution": "Ubuntu"},
    "gpu-h100x8-base": {"id": 160000002, "name": "AI/ML Ready H100x8", "distribution": "Ubuntu"},
    "gpu-amd-base": {"id": 160000003, "name": "AI/ML Ready AMD", "distribution": "Ubuntu"},
    "ubuntu-24-04-x64": {"id": 160000004, "name": "24.04 (LTS) x64", "distribution": "Ubuntu"},
}

# ------------------------------------------------------------------------------------------
# Scaleway (§4.3), prices in EUR/h
# ------------------------------------------------------------------------------------------

SCW_ZONES = ("fr-par-1", "fr-par-2", "pl-waw-2", "nl-ams-1")


@dataclass(frozen=True)
class ScwType:
    name: str
    gpus: int
    gpu_name: str | None
    vram_gb: int
    ncpus: int
    ram_gib: int
    hourly: float
    zones: tuple[str, ...]
    availability: str = "available"
    scratch_gb: int = 0
    arch: str = "x86_64"

    @property
    def monthly(self) -> float:
        return round(self.hourly * 730, 4)  # monthly = hourly x 730 in the real catalog


_PAR2_WAW2 = ("fr-par-2", "pl-waw-2")

SCW_TYPES: tuple[ScwType, ...] = (
    ScwType("L4-1-24G", 1, "L4", 24, 8, 48, 0.7875, _PAR2_WAW2),
    ScwType("L4-2-24G", 2, "L4", 24, 16, 96, 1.575, _PAR2_WAW2),
    ScwType("L4-4-24G", 4, "L4", 24, 32, 192, 3.15, _PAR2_WAW2),
    ScwType("L4-8-24G", 8, "L4", 24, 64, 384, 6.30, _PAR2_WAW2, availability="shortage"),
    # Scratch sizes are guesses (not in the notes).
    ScwType("L40S-1-48G", 1, "L40S", 48, 8, 96, 1.469916, _PAR2_WAW2, scratch_gb=1600),
    ScwType("L40S-2-48G", 2, "L40S", 48, 16, 192, 2.94, _PAR2_WAW2, scratch_gb=3200),
    ScwType("L40S-4-48G", 4, "L40S", 48, 32, 384, 5.88, _PAR2_WAW2, availability="shortage", scratch_gb=6400),
    ScwType(
        "L40S-8-48G", 8, "L40S", 48, 64, 768, 11.76, _PAR2_WAW2, availability="shortage", scratch_gb=12800
    ),
    ScwType("H100-1-80G", 1, "H100", 80, 24, 240, 2.8665, _PAR2_WAW2, scratch_gb=3000),
    ScwType("H100-2-80G", 2, "H100", 80, 48, 480, 5.73, _PAR2_WAW2, availability="shortage", scratch_gb=6000),
    ScwType("H100-SXM-2-80G", 2, "H100-SXM", 80, 32, 240, 6.6198, ("fr-par-2",)),
    ScwType("H100-SXM-4-80G", 4, "H100-SXM", 80, 64, 480, 12.77, ("fr-par-2",)),  # RAM: guess
    ScwType("H100-SXM-8-80G", 8, "H100-SXM", 80, 128, 960, 25.3308, ("fr-par-2",)),
    ScwType("B300-SXM-2-288G", 2, "B300", 288, 56, 960, 18.96, ("fr-par-2",), availability="shortage"),
    ScwType("B300-SXM-8-288G", 8, "B300", 288, 224, 3840, 60.0, ("fr-par-2",), availability="shortage"),
    ScwType("RENDER-S", 1, "P100", 16, 10, 42, 1.221, ("fr-par-1",)),
    # GPU-3070-S is left out on purpose: the notes call it "likely retired".
    # Non-GPU filler (prices approximate).
    ScwType("DEV1-S", 0, None, 0, 2, 2, 0.0088, SCW_ZONES),
    ScwType("POP2-2C-8G", 0, None, 0, 2, 8, 0.0735, SCW_ZONES),
)

SCW_IMAGES = (
    "ubuntu_noble_gpu_os_13_nvidia",
    "ubuntu_noble_gpu_os_12",
    "ubuntu_jammy_gpu_os_12",
    "ubuntu_noble",
)
