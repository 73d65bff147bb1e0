"""Knobs of the emulated VMs: timings, failure modes of the stand-in vLLM, GPUs per instance type.

Everything here is plain data. A :class:`StandInOptions` is copied into each VM when it boots
(``VMFarm(stand_in_options=…)`` for all VMs, ``farm.configure(instance_id, …)`` or
``farm.configure_next(…)`` for one), and stays mutable on ``vm.options`` while the VM runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

FailureKind = Literal[
    "oom",  # torch.OutOfMemoryError while loading the weights
    "kv_cache",  # max seq len larger than what the KV cache can hold
    "crash",  # a CUDA error after the server was ready
    "model_not_found",  # the Hub answers 401/404 Repository Not Found
    "gated",  # the repo is gated and HF_TOKEN is missing or not accepted
    "nccl",  # NCCL fails to initialise (tensor parallel)
    "bf16",  # bfloat16 on a GPU with compute capability < 8.0
    "no_gpu",  # the container sees no GPU
]

#: Failure kinds that happen while the model loads (health never turns 200); the rest after.
LOAD_FAILURES: frozenset[str] = frozenset(
    {"oom", "kv_cache", "model_not_found", "gated", "nccl", "bf16", "no_gpu"}
)


@dataclass(frozen=True)
class VLLMFailure:
    """A failure the stand-in vLLM acts out, with the log text real vLLM prints for it.

    ``after``: real seconds after the container starts (load failures) or after the server
    became ready (``crash``) before the process dies. ``times``: how many starts of the
    container fail (None: every start, so a restart policy loops like the real thing).
    ``detail``: values that appear in the log (see the constructors). ``models``: only these
    model ids fail (None: any), so a test can make one model fail and another one load.

    The settings change that cures the real failure cures the stand-in's too (so maider's
    healing is tested against cause and effect, not a counter): ``kv_cache`` fails only while
    ``--max-model-len`` exceeds ``max_tokens``; ``nccl`` only without ``NCCL_P2P_DISABLE=1`` in
    the container's environment; ``bf16`` only while ``--dtype`` is not float16/half; ``oom``
    with ``fits_at`` only while ``--gpu-memory-utilization`` is above it (without: always).
    """

    kind: FailureKind
    after: float = 0.0
    times: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] | None = None

    @classmethod
    def oom(
        cls,
        *,
        after: float = 0.0,
        times: int | None = None,
        tried_gib: float = 1.02,
        fits_at: float | None = None,
        models: tuple[str, ...] | None = None,
    ) -> VLLMFailure:
        """``fits_at``: the model loads once ``--gpu-memory-utilization`` is at most this."""
        detail: dict[str, Any] = {"tried_gib": tried_gib}
        if fits_at is not None:
            detail["fits_at"] = fits_at
        return cls("oom", after, times, detail, models)

    @classmethod
    def kv_cache(
        cls,
        *,
        max_tokens: int = 18000,
        after: float = 0.0,
        times: int | None = None,
        models: tuple[str, ...] | None = None,
    ) -> VLLMFailure:
        return cls("kv_cache", after, times, {"max_tokens": max_tokens}, models)

    @classmethod
    def crash(cls, *, after: float = 0.0, times: int | None = None) -> VLLMFailure:
        return cls("crash", after, times)

    @classmethod
    def model_not_found(
        cls, *, after: float = 0.0, times: int | None = None, models: tuple[str, ...] | None = None
    ) -> VLLMFailure:
        return cls("model_not_found", after, times, {}, models)

    @classmethod
    def gated(
        cls,
        *,
        valid_token: str | None = None,
        after: float = 0.0,
        times: int | None = None,
        models: tuple[str, ...] | None = None,
    ) -> VLLMFailure:
        """Fails unless the container's HF_TOKEN equals ``valid_token`` (None: no token works)."""
        return cls("gated", after, times, {"valid_token": valid_token}, models)

    @classmethod
    def nccl(
        cls, *, after: float = 0.0, times: int | None = None, models: tuple[str, ...] | None = None
    ) -> VLLMFailure:
        return cls("nccl", after, times, {}, models)

    @classmethod
    def bf16(
        cls, *, after: float = 0.0, times: int | None = None, models: tuple[str, ...] | None = None
    ) -> VLLMFailure:
        return cls("bf16", after, times, {}, models)

    @classmethod
    def no_gpu(cls, *, after: float = 0.0, times: int | None = None) -> VLLMFailure:
        return cls("no_gpu", after, times)


#: (messages or prompt, served model name) -> the reply text of a completion.
ReplyFn = Callable[[Any, str], str]


def default_reply(_request: Any, served_name: str) -> str:
    return f"Hello from the stand-in vLLM serving {served_name}."


@dataclass
class StandInOptions:
    """Per-VM behaviour. Times called ``*_seconds`` are real seconds; ``*_sim_seconds`` are
    seconds of the simulator's clock (a FakeClock only moves when the test advances it).
    A delay is over when both have passed."""

    # -- boot ------------------------------------------------------------------------------
    #: sshd starts listening this long after the instance reads "running" in the API
    #: (real machines answer the API minutes before sshd is up).
    sshd_sim_seconds: float = 0.0
    sshd_seconds: float = 0.0
    #: cloud-init reads "running" this long (its final stage, runcmd, runs at the end).
    cloudinit_sim_seconds: float = 0.0
    cloudinit_seconds: float = 0.0
    #: A schema violation makes status "error" (True, as the brief wants) or "degraded done"
    #: with exit code 2 (False, as cloud-init >= 23.4 really does).
    strict_schema: bool = True
    #: A failing bootcmd/runcmd line makes status "error" (True) or, as /bin/sh runs the
    #: runcmd script without -e, only the last line's exit status counts (False).
    strict_runcmd: bool = True
    #: Also accept the keys the vendor API was given (Linode authorized_keys, DO ssh_keys).
    #: Off by default: maider delivers its key in the user-data.
    accept_vendor_keys: bool = False
    #: The image's default user (gets top-level ssh_authorized_keys when users has "default").
    default_user: str = "ubuntu"

    # -- docker ----------------------------------------------------------------------------
    #: Seconds between a crash and the restart of a container with a restart policy.
    restart_backoff: float = 0.2
    #: Check what real vLLM would refuse: TP > visible GPUs, no GPU reservation in compose,
    #: explicit bfloat16 on compute capability < 8.0, TP > 1 without ipc: host or shm_size.
    realism_checks: bool = True

    # -- stand-in vLLM ---------------------------------------------------------------------
    #: /health answers 503 this long after the container starts (weights loading).
    load_seconds: float = 0.0
    load_sim_seconds: float = 0.0
    vllm_failure: VLLMFailure | None = None
    #: Real seconds between streamed tokens (0: as fast as possible).
    token_delay: float = 0.0
    reply: ReplyFn = default_reply
    #: The image's vLLM version (log banner, /version).
    vllm_version: str = "0.11.0"
    #: Used when the compose command has no --max-model-len.
    default_max_model_len: int = 32768
    #: nvidia-smi's utilization.gpu of a GPU while vLLM runs requests on it, per GPU index
    #: (missing: 95). A low figure acts out a GPU that is not doing the work (a stuck TP rank).
    gpu_busy_pct: dict[int, int] = field(default_factory=dict)

    # -- stand-in Open WebUI ---------------------------------------------------------------
    webui_load_seconds: float = 0.0

    def copy(self, **changes: Any) -> StandInOptions:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------
# GPUs
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPUModel:
    """One GPU as nvidia-smi names it."""

    name: str
    memory_mib: int
    compute_capability: float | None  # None: not an NVIDIA part (no nvidia-smi)

    @property
    def nvidia(self) -> bool:
        return self.compute_capability is not None


# nvidia-smi names and memory.total values of the parts the simulators sell. Memory figures
# are what nvidia-smi reports (slightly below the marketing size); B300 is a guess.
QUADRO_RTX_6000 = GPUModel("Quadro RTX 6000", 24576, 7.5)
RTX_4000_ADA = GPUModel("NVIDIA RTX 4000 Ada Generation", 20475, 8.9)
RTX_6000_ADA = GPUModel("NVIDIA RTX 6000 Ada Generation", 49140, 8.9)
L4 = GPUModel("NVIDIA L4", 23034, 8.9)
L40S = GPUModel("NVIDIA L40S", 46068, 8.9)
H100_PCIE = GPUModel("NVIDIA H100 PCIe", 81559, 9.0)
H100_SXM = GPUModel("NVIDIA H100 80GB HBM3", 81559, 9.0)
H200 = GPUModel("NVIDIA H200", 143771, 9.0)
B300 = GPUModel("NVIDIA B300 SXM6 AC", 275040, 10.3)  # guess
P100 = GPUModel("Tesla P100-PCIE-16GB", 16384, 6.0)
MI300X = GPUModel("AMD Instinct MI300X", 196592, None)

_BY_DO_MODEL = {
    "nvidia_rtx_4000_ada": RTX_4000_ADA,
    "nvidia_rtx_6000_ada": RTX_6000_ADA,
    "nvidia_l40s": L40S,
    "nvidia_h100": H100_SXM,
    "nvidia_h200": H200,
    "amd_mi300x": MI300X,
}
_BY_SCW_NAME = {
    "L4": L4,
    "L40S": L40S,
    "H100": H100_PCIE,
    "H100-SXM": H100_SXM,
    "B300": B300,
    "P100": P100,
}


def gpus_for_type(vendor: str, type_id: str) -> tuple[GPUModel, ...]:
    """The GPUs of a simulator instance type, from the simulators' own catalogs."""
    from tests.cloudsim import catalogs

    if vendor == "linode":
        for lt in catalogs.LINODE_TYPES:
            if lt.id == type_id and lt.gpus:
                model = QUADRO_RTX_6000 if "rtx6000" in lt.id else RTX_4000_ADA
                return (model,) * lt.gpus
    elif vendor == "digitalocean":
        for size in catalogs.DO_SIZES:
            if size.slug == type_id and size.gpu_count and size.gpu_model:
                do_model = _BY_DO_MODEL.get(size.gpu_model)
                if do_model is not None:
                    return (do_model,) * size.gpu_count
    elif vendor == "scaleway":
        for st in catalogs.SCW_TYPES:
            if st.name == type_id and st.gpus and st.gpu_name:
                scw_model = _BY_SCW_NAME.get(st.gpu_name)
                if scw_model is not None:
                    return (scw_model,) * st.gpus
    return ()
